"""`--worker-backend ray`: every stage worker a Ray actor, on a real Ray cluster of three nodes on this machine
(`ray.cluster_utils.Cluster`: a head and two nodes carrying their own custom resources), stages pinned to nodes by
the pipeline YAML. Chat, a voice chat (ASR -> thinker ⇢ talker) and an image work across the nodes; a killed actor
fails its request with the same error as a crashed local worker, /health says 503, and a new actor takes over;
so does a node that is lost, once a node that can hold its stages joins. Replicas reserved in a placement group
spread over the nodes; a cluster that cannot place a stage, or meet the placement strategy, or cannot be reached,
stops the server at start-up in one line."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys

import pytest
import yaml
from ray.cluster_utils import Cluster

from tests.conftest import ROOT, free_port, run_server, shared_models, wait_until
from tests.media_helpers import SPOKEN

PINS = {"thinker": "node_a", "asr": "node_b", "talker": "node_b"}


@pytest.fixture(scope="module")
def cluster():
    # The head notices a silent node within about 2 s (Ray's defaults: about 30 s).
    health_checks = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                     "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": health_checks})
    nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1}) for name in ("node_a", "node_b")}
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"stages": {stage: {"placement": {"resources": {node: 0.1}}}
                                                 for stage, node in PINS.items()}}))
    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--worker-backend", "ray", "--ray-address", cluster[0].address, "--config", str(config),
                    "--image-model", f"sketch-rnn:{sketches}", "--embedding-model", "none", "--vision-model", "none",
                    tmp_path=folder, timeout=300) as s:
        yield s


def stages(server) -> dict[str, dict]:
    with server.http() as http:
        return {s["name"]: s["info"] for s in http.get("/get_model_info").json()["stages"]}


def test_each_stage_is_an_actor_on_the_node_it_is_pinned_to(server, cluster):
    _, nodes = cluster
    info = stages(server)
    for stage, node in PINS.items():
        assert info[stage]["node"] == nodes[node].node_id, stage
    assert len({info[s]["pid"] for s in info}) == len(info)  # one actor (process) per stage
    assert all(info[s]["pid"] != server.process.pid for s in info)


def test_chat_voice_and_an_image_across_nodes(server):
    client = server.openai()
    answer = client.chat.completions.create(model="smollm2-135m", max_tokens=16,
                                            messages=[{"role": "user", "content": "Say hello."}])
    assert answer.choices[0].message.content.strip()
    spoken = {"type": "input_audio", "input_audio": {"data": base64.b64encode(SPOKEN.read_bytes()).decode(),
                                                     "format": "wav"}}
    voice = client.chat.completions.create(model="smollm2-135m", max_tokens=24, modalities=["text", "audio"],
                                           audio={"voice": "alloy", "format": "wav"},
                                           messages=[{"role": "user", "content": [spoken]}])
    assert voice.usage.prompt_tokens > 20  # the transcript from node_b reached the thinker on node_a
    audio = voice.choices[0].message.audio
    assert audio.transcript and len(base64.b64decode(audio.data)) > 4000  # spoken on node_b
    image = client.images.generate(model="sketch-rnn", prompt="a cat", size="64x64")
    assert base64.b64decode(image.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_actor_fails_its_request_and_a_new_one_takes_over(server):
    before = stages(server)["thinker"]["pid"]
    with server.http() as http:
        with http.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Write a long story about the sea."}],
                "max_tokens": 400, "stream": True}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            os.kill(before, signal.SIGKILL)
            rest = "\n".join(lines)
        assert "worker_crashed" in rest and "the 'thinker' stage worker crashed" in rest
        health = http.get("/health")
        assert health.status_code == 503 and "thinker" in health.text
        wait_until(lambda: http.get("/health").status_code == 200, timeout=60)
        answer = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 8})
        assert answer.status_code == 200
    after = stages(server)["thinker"]
    assert after["pid"] != before and after["node"] == stages(server)["thinker"]["node"]


def serve_once(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")}
    return subprocess.run([sys.executable, "-m", "omniserve", "serve", "--port", "0", "--worker-backend", "ray",
                           "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                           "--embedding-model", "none", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_a_stage_no_node_can_hold_fails_the_start_in_one_line(cluster, tmp_path):
    config = tmp_path / "nowhere.yaml"
    config.write_text(yaml.safe_dump({"stages": {"thinker": {"placement": {"resources": {"gpu_box": 1}}}}}))
    done = serve_once("--ray-address", cluster[0].address, "--config", str(config))
    assert done.returncode == 2
    assert "stage 'thinker' cannot be placed on the Ray cluster: it needs gpu_box 1 on one node" in done.stderr


def test_an_unreachable_cluster_fails_the_start_in_one_line():
    port = free_port()  # nothing listens there
    done = serve_once("--ray-address", f"127.0.0.1:{port}", timeout=60)
    assert done.returncode == 2 and f"--ray-address 127.0.0.1:{port}: cannot reach the Ray cluster" in done.stderr


def test_replicas_reserved_in_a_strict_spread_placement_group_are_on_different_nodes(cluster, tmp_path):
    config = tmp_path / "spread.yaml"
    config.write_text(yaml.safe_dump({"placement_strategy": "strict_spread",
                                      "stages": {"thinker": {"placement": {"replicas": 3}}}}))
    with run_server("--worker-backend", "ray", "--ray-address", cluster[0].address, "--config", str(config),
                    "--asr-model", "none", "--tts-model", "none", "--embedding-model", "none",
                    "--vision-model", "none", tmp_path=tmp_path, timeout=300) as s, s.http() as http:
        thinker = next(st for st in http.get("/get_model_info").json()["stages"] if st["name"] == "thinker")
        assert len({replica["node"] for replica in thinker["replicas"]}) == 3  # one on each node
        assert "placement group" in s.log() and "STRICT_SPREAD" in s.log()
        answer = s.openai().chat.completions.create(model="smollm2-135m", max_tokens=4,
                                                    messages=[{"role": "user", "content": "Hi"}])
        assert answer.choices[0].message.content


@pytest.mark.parametrize(("strategy", "placement", "line"), [
    (None, {"replicas": 4, "num_cpus": 1},
     "the pipeline's workers need CPU 4 in all (thinker 4 × 1), and the Ray cluster has 3"),
    ("strict_spread", {"replicas": 4},
     "placement_strategy strict_spread puts each of the pipeline's 4 workers on a node of its own, and the Ray "
     "cluster has 3 nodes"),
    ("strict_pack", {"replicas": 2, "num_cpus": 1},
     "placement_strategy strict_pack puts the pipeline's 2 workers on one node, and no node of the Ray cluster "
     "has CPU 2"),
])
def test_a_layout_the_cluster_cannot_hold_fails_the_start_in_one_line(cluster, tmp_path, strategy, placement, line):
    """Each worker alone would fit a node; together, or as the strategy wants them, they cannot."""
    config = tmp_path / "strategy.yaml"
    config.write_text(yaml.safe_dump({"placement_strategy": strategy, "stages": {"thinker": {"placement": placement}}}))
    done = serve_once("--ray-address", cluster[0].address, "--config", str(config))
    assert done.returncode == 2 and line in done.stderr, done.stderr


def test_a_node_lost_without_a_word_fails_its_stages_until_a_node_that_can_hold_them_joins(server, cluster):
    """node_b's raylet stops answering, as a machine that loses power would: its actors' processes (stopped
    with it) close no socket, so only Ray can tell that they are gone. Last in this module: it replaces node_b."""
    ray_cluster, nodes = cluster
    with server.http() as http:
        raylet = nodes["node_b"].all_processes["raylet"][0].process.pid
        actors = [stages(server)[name]["pid"] for name in ("asr", "talker")]
        for pid in (raylet, *actors):
            os.kill(pid, signal.SIGSTOP)
        def lost() -> dict | None:  # both of node_b's stages seen to be gone (each actor's death is noticed alone)
            health = http.get("/health").json()
            return health if all(health.get("stages", {}).get(s, "healthy") != "healthy" for s in ("asr", "talker")) \
                else None

        health = wait_until(lost, timeout=60, interval=0.1)
        assert "restarting" in health["stages"]["talker"] and health["stages"]["thinker"] == "healthy"
        spoken = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello.", "voice": "alloy"})
        assert spoken.status_code == 503 and "talker" in spoken.json()["error"]["message"]
        chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                        "max_tokens": 4})
        assert chat.status_code == 200  # the thinker's node is still there
        ray_cluster.remove_node(nodes["node_b"], allow_graceful=False)  # its stopped processes, killed
        for pid in actors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nodes["node_b"] = ray_cluster.add_node(num_cpus=1, resources={"node_b": 1})
        wait_until(lambda: http.get("/health").status_code == 200, timeout=120, interval=0.5)
        assert stages(server)["talker"]["node"] == nodes["node_b"].node_id
        spoken = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello.", "voice": "alloy",
                                                     "response_format": "wav"})
        assert spoken.status_code == 200 and len(spoken.content) > 4000
