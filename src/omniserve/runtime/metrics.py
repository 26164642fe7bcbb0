"""Prometheus metrics, by stage and model: what vLLM-Omni's and sglang-omni's users watch.

The coordinator sees every request arrive, wait, start and end, and every output of every
stage, so it records here: end-to-end latency, queue time, time to first token, inter-token
latency, time to first audio packet, the real-time factor of generated audio, how long a
listener's playback would have waited for audio (underrun) and whether it ever did, token
counters, requests by finish reason, worker restarts, and the batch size of each worker step
(which the workers report). Running, queued and healthy are read from the coordinator at scrape
time. The `model` label is the served model a stage runs (`set_models`, once they are known).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from omniserve.runtime.types import OmniOutput, PayloadRef

disable_created_metrics()  # no `_created` sample beside every series: nobody reads them, everyone scrapes them

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNDERRUN_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# playback that waited less than this in all stayed continuous: less than one 20 ms packet of a WebRTC or
# realtime client
CONTINUITY_TOLERANCE = 0.01


@dataclass
class Playback:
    """A listener playing one choice's audio in real time from its first packet: how long it would have
    waited for the next packet, in all."""

    start: float  # when the first packet arrived
    received: float = 0.0  # seconds of audio
    underrun: float = 0.0  # seconds the playback waited

    def heard(self, now: float, seconds: float) -> None:
        """A packet of `seconds` of audio arrived at `now`: the playback waited if it had played all before."""
        waited = now - (self.start + self.received + self.underrun)
        if waited > 0:
            self.underrun += waited
        self.received += seconds

    @property
    def continuous(self) -> bool:
        return self.underrun < CONTINUITY_TOLERANCE


@dataclass
class RequestClock:
    """When one request arrived and what its stages have sent so far."""

    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first: set[tuple[str, str]] = field(default_factory=set)  # (stage, "token" or "audio") already out
    last_token: dict[tuple[str, int], float] = field(default_factory=dict)  # (stage, choice) -> when
    audio_seconds: dict[str, float] = field(default_factory=dict)
    playback: dict[tuple[str, int], Playback] = field(default_factory=dict)  # (stage, choice) -> its listener


class StageMetrics:
    def __init__(self, stages: Iterable[str]):
        self.registry = CollectorRegistry()
        self.models = {s: s for s in stages}  # stage -> the served model it runs
        labels = ["stage", "model"]

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.e2e = histogram("omniserve_e2e_request_latency_seconds",
                             "Arrival to last output, per request, for each stage it emits from", LATENCY_BUCKETS)
        self.queue = histogram("omniserve_request_queue_time_seconds",
                               "Time a request waited for slots on its stages", LATENCY_BUCKETS)
        self.ttft = histogram("omniserve_time_to_first_token_seconds", "Arrival to the first generated token",
                              LATENCY_BUCKETS)
        self.itl = histogram("omniserve_inter_token_latency_seconds", "Time between tokens of one choice",
                             STEP_BUCKETS)
        self.ttfa = histogram("omniserve_time_to_first_audio_seconds", "Arrival to the first audio packet",
                              LATENCY_BUCKETS)
        self.rtf = histogram("omniserve_audio_real_time_factor",
                             "Arrival to the last audio packet, over the seconds of audio made", RTF_BUCKETS)
        self.underrun = histogram("omniserve_audio_underrun_seconds",
                                  "Per response (choice): how long playback from its first audio packet in real time "
                                  "would have waited for the next ones, in all", UNDERRUN_BUCKETS)
        self.continuity = Counter("omniserve_audio_continuity_ok", "Audio responses (choices) whose playback never "
                                  f"waited (ok=true: underrun under {CONTINUITY_TOLERANCE * 1000:.0f} ms in all) "
                                  "or did", [*labels, "ok"], registry=self.registry)
        self.batch = histogram("omniserve_batch_size", "Requests or sequences in one worker step", BATCH_BUCKETS)
        self.prompt_tokens = Counter("omniserve_prompt_tokens", "Prompt tokens processed", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("omniserve_generation_tokens", "Tokens generated", labels,
                                         registry=self.registry)
        self.finished = Counter("omniserve_request_success", "Choices and requests ended, by finish reason "
                                "(abort: the client left; error: a stage failed)", [*labels, "finished_reason"],
                                registry=self.registry)
        self.restarts = Counter("omniserve_worker_restarts", "Stage workers that died or hung and were restarted",
                                labels, registry=self.registry)
        self.object_store_bytes = Counter("omniserve_payload_object_store_bytes",
                                          "Bytes of payloads a stage sent to the next through Ray's object store",
                                          labels, registry=self.registry)
        self.answers_ahead = Counter("omniserve_realtime_answers_ahead", "Realtime answers begun at the speaker's "
                                     "pause: taken by the turn's response, or dropped (the speaker went on, or the "
                                     "response was not the same request)", ["outcome"], registry=self.registry)

    def set_models(self, models: dict[str, str]) -> None:
        self.models.update(models)

    def watch(self, runtime: RuntimeState) -> None:
        """Read running, queued and healthy (per stage and in all) from `runtime` at scrape time."""
        self.registry.register(_StateCollector(runtime, self.models))

    def _on(self, stage: str) -> tuple[str, str]:
        return stage, self.models.get(stage, stage)

    # ---- what the coordinator reports ------------------------------------------------------

    def admitted(self, clock: RequestClock, stages: Iterable[str]) -> None:
        clock.admitted = time.monotonic()
        for stage in stages:
            self.queue.labels(*self._on(stage)).observe(clock.admitted - clock.arrived)

    def output(self, clock: RequestClock, stage: str, out: OmniOutput) -> None:
        now = time.monotonic()
        on = self._on(stage)
        if out.started and out.prompt_tokens:
            self.prompt_tokens.labels(*on).inc(out.prompt_tokens)
        if out.token_ids:
            if (stage, "token") not in clock.first:
                clock.first.add((stage, "token"))
                self.ttft.labels(*on).observe(now - clock.arrived)
            last = clock.last_token.get((stage, out.index))
            if last is not None:
                self.itl.labels(*on).observe((now - last) / len(out.token_ids))
            clock.last_token[(stage, out.index)] = now
        if out.audio and out.sample_rate:
            if (stage, "audio") not in clock.first:
                clock.first.add((stage, "audio"))
                self.ttfa.labels(*on).observe(now - clock.arrived)
            seconds = len(out.audio) / 2 / out.sample_rate
            clock.audio_seconds[stage] = clock.audio_seconds.get(stage, 0.0) + seconds
            clock.playback.setdefault((stage, out.index), Playback(now)).heard(now, seconds)
        if out.finish_reason or out.done:
            ending = [key for key in clock.playback if key[0] == stage and (out.done or key[1] == out.index)]
            for key in ending:
                play = clock.playback.pop(key)
                self.underrun.labels(*on).observe(play.underrun)
                self.continuity.labels(*on, "true" if play.continuous else "false").inc()
        if out.finish_reason:
            self.finished.labels(*on, out.finish_reason).inc()
            if out.completion_tokens:
                self.generation_tokens.labels(*on).inc(out.completion_tokens)
        if isinstance(out.payload, PayloadRef):
            self.object_store_bytes.labels(*on).inc(out.payload.nbytes)
        if out.done and clock.audio_seconds.get(stage):
            self.rtf.labels(*on).observe((now - clock.arrived) / clock.audio_seconds[stage])

    def ended(self, clock: RequestClock, stages: Iterable[str], how: str | None = None) -> None:
        """A request's end: `how` is None when it completed, else "abort" or "error"."""
        for stage in stages:
            on = self._on(stage)
            if how is None:
                self.e2e.labels(*on).observe(time.monotonic() - clock.arrived)
            else:
                self.finished.labels(*on, how).inc()

    def steps(self, stage: str, batch_sizes: Iterable[int]) -> None:
        histogram = self.batch.labels(*self._on(stage))
        for size in batch_sizes:
            if size:  # a step that only waited for others (an image block, a turn with nothing ready)
                histogram.observe(size)

    def restarted(self, stage: str) -> None:
        self.restarts.labels(*self._on(stage)).inc()


class RuntimeState(Protocol):
    """What the coordinator shows of its state."""

    num_running: int
    num_queued: int
    crashes: int

    def stage_info(self) -> list[dict[str, Any]]: ...


class _StateCollector:
    """Gauges read at scrape time; nothing to keep in sync."""

    def __init__(self, runtime: RuntimeState, models: dict[str, str]):
        self.runtime = runtime
        self.models = models

    def collect(self):
        stages = self.runtime.stage_info()
        labels = ["stage", "model"]
        running = GaugeMetricFamily("omniserve_num_requests_running", "Requests holding a slot on the stage",
                                    labels=labels)
        queued = GaugeMetricFamily("omniserve_num_requests_waiting", "Requests waiting for the stage", labels=labels)
        healthy = GaugeMetricFamily("omniserve_stage_healthy", "1 when the stage's worker is up", labels=labels)
        for s in stages:
            on = [s["name"], self.models.get(s["name"], s["name"])]
            running.add_metric(on, s["running"])
            queued.add_metric(on, s["queued"])
            healthy.add_metric(on, int(s["healthy"]))
        yield from (running, queued, healthy)
        yield GaugeMetricFamily("omniserve_num_running_requests", "Requests admitted and not yet ended, in all",
                                value=self.runtime.num_running)
        yield GaugeMetricFamily("omniserve_num_queued_requests", "Requests waiting for slots, in all",
                                value=self.runtime.num_queued)
        yield GaugeMetricFamily("omniserve_healthy", "1 when every stage is up",
                                value=int(all(s["healthy"] for s in stages)))
        yield CounterMetricFamily("omniserve_worker_crashes", "Stage workers that died or hung, in all",
                                  value=self.runtime.crashes)
