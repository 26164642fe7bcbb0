"""/metrics by stage and model, after real requests: latency, TTFT, ITL, first audio, RTF, audio underrun and
continuity, queue time, batch sizes, token counters, finish reasons, worker restarts, and running/queued/healthy
per stage."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import idle, wait_until


def scrape(http) -> dict[str, dict[tuple, float]]:
    """metric sample name -> {sorted label items: value}."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics, name: str, **labels) -> float:
    """The sum over samples of `name` whose labels include `labels`."""
    return sum(v for key, v in metrics.get(name, {}).items() if set(labels.items()) <= set(key))


def test_metrics_by_stage_and_model(server, http):
    before = scrape(http)
    chat = {"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 12, "ignore_eos": True}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
        assert r.status_code == 200 and sum(1 for _ in r.iter_lines()) > 5
    voice = {**chat, "modalities": ["text", "audio"], "audio": {"format": "wav"}}
    assert http.post("/v1/chat/completions", json=voice).status_code == 200
    assert http.post("/v1/audio/speech", json={"input": "Hello there.", "response_format": "wav"}).status_code == 200
    assert http.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200
    with httpx.Client(base_url=server.base_url, timeout=30) as c:  # a client that leaves early: an abort
        with c.stream("POST", "/v1/chat/completions", json={**chat, "max_tokens": 200, "stream": True}) as r:
            next(r.iter_lines())
    wait_until(lambda: idle(http), timeout=10)
    after = scrape(http)

    def grew(name: str, by: float = 1, **labels) -> float:
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta >= by, (name, labels, delta)
        return delta

    thinker = {"stage": "thinker", "model": "smollm2-135m"}
    talker = {"stage": "talker", "model": "piper-joe-medium"}
    grew("omniserve_e2e_request_latency_seconds_count", 3, **thinker)
    grew("omniserve_request_queue_time_seconds_count", 4, **thinker)
    grew("omniserve_time_to_first_token_seconds_count", 3, **thinker)
    assert grew("omniserve_inter_token_latency_seconds_count", 30, **thinker) < 200
    assert grew("omniserve_generation_tokens_total", 36, **thinker) >= 36
    grew("omniserve_prompt_tokens_total", 30, **thinker)
    grew("omniserve_request_success_total", 3, finished_reason="length", **thinker)
    grew("omniserve_request_success_total", 1, finished_reason="abort", **thinker)
    grew("omniserve_batch_size_count", 12, **thinker)
    grew("omniserve_time_to_first_audio_seconds_count", 2, **talker)
    grew("omniserve_audio_real_time_factor_count", 2, **talker)
    rtf = (value(after, "omniserve_audio_real_time_factor_sum", **talker)
           - value(before, "omniserve_audio_real_time_factor_sum", **talker))
    assert 0 < rtf < 20
    responses = grew("omniserve_audio_continuity_ok_total", 2, **talker)  # the voiced chat answer and the speech
    assert grew("omniserve_audio_underrun_seconds_count", 2, **talker) == responses
    # "Hello there." is one sentence, spoken whole by Piper in one packet: nothing for playback to wait for
    grew("omniserve_audio_continuity_ok_total", 1, ok="true", **talker)
    grew("omniserve_batch_size_count", 1, stage="embedder", model="all-MiniLM-L6-v2")
    grew("omniserve_e2e_request_latency_seconds_count", 1, stage="embedder")
    for stage in ("thinker", "talker", "asr", "vision", "embedder"):
        assert value(after, "omniserve_stage_healthy", stage=stage) == 1
        assert value(after, "omniserve_num_requests_running", stage=stage) == 0
        assert value(after, "omniserve_num_requests_waiting", stage=stage) == 0
