"""Stage workers as Ray actors (`--worker-backend ray`): the stages spread over the machines of a Ray cluster.

Each worker (one stage, or a process group's stages) is one actor, placed by Ray from its stages' `placement`
(`num_cpus`, `num_gpus`, custom `resources`, which can pin it to a node). The actor runs the same worker loop
as a local process; it connects back to the coordinator over TCP, one authenticated `multiprocessing`
connection per stage, and the coordinator drives those with the same `PipeTransport` and typed messages as a
local pipe. A dead actor (killed, crashed, or its node lost) closes its sockets, and the coordinator fails its
requests and starts a new one, as it does for a local process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable
from multiprocessing.connection import Client as connect_to
from multiprocessing.connection import Connection, Listener
from typing import Any

from omniserve.config import StageConfig
from omniserve.errors import ConfigError
from omniserve.runtime.launcher import StageLoadError, WorkerHandle, connect_worker
from omniserve.runtime.messages import FromWorker
from omniserve.runtime.worker import run_stage_worker


def start_ray(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one this machine is part of; None: a local one)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--worker-backend ray needs Ray: pip install 'omniserve[ray]'") from None

    if address not in (None, "auto") and ":" in address:  # Ray itself retries an unreachable one for minutes
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--ray-address {address}: cannot reach the Ray cluster ({exc})") from None
    try:
        ray.init(address=address, namespace="omniserve", include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: cannot join the Ray cluster: {exc}") from None


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class ActorProcess:
    """A worker that is a Ray actor, as the coordinator sees a worker process."""

    def __init__(self, actor: Any, run: Any, pid: int, node: tuple[str, str]):
        self.actor, self.run, self.pid, self.node = actor, run, pid, node
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        import ray

        done, _ = ray.wait([self.run], timeout=0)
        return not done

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)

    def join(self, timeout: float | None = None) -> None:
        import ray

        done, _ = ray.wait([self.run], timeout=timeout)
        if done:  # its loop ended (stopped, or dead): the actor has nothing left to do
            ray.kill(self.actor, no_restart=True)


def _actor_options(stages: list[StageConfig]) -> dict[str, Any]:
    """Ray's resources for a worker: its stages' together. A stage asks for no CPU unless its placement says
    (a local worker process reserves none either)."""
    resources: dict[str, float] = {}
    for stage in stages:
        for name, amount in stage.placement.resources.items():
            resources[name] = resources.get(name, 0.0) + amount
    return {"num_cpus": sum(s.placement.num_cpus or 0 for s in stages),
            "num_gpus": sum(s.placement.num_gpus or 0 for s in stages), "resources": resources}


def _check_placeable(names: str, options: dict[str, Any]) -> None:
    """Fail now, in one line, when no node of the cluster has what a worker asks for (Ray would wait forever)."""
    import ray

    wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
    wanted = {name: amount for name, amount in wanted.items() if amount}
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(all(node.get(name, 0) >= amount for name, amount in wanted.items()) for node in nodes):
        return
    short = next(name for name, amount in wanted.items() if all(node.get(name, 0) < amount for node in nodes)) \
        if nodes else "a node"
    have = max((node.get(short, 0) for node in nodes), default=0)
    raise StageLoadError(f"stage {names!r} cannot be placed on the Ray cluster: it needs {short} "
                         f"{wanted.get(short, 1):g} on one node, and the most any node has is {have:g}")


_ACTOR = None


def _actor_class():
    """The actor class, made on first use (Ray is an optional dependency)."""
    global _ACTOR
    if _ACTOR is None:
        import ray

        @ray.remote(max_restarts=0)
        class StageWorker:
            def run(self, stages: list[dict[str, Any]], address: tuple[str, int], authkey: bytes,
                    log_level: str) -> None:
                """The worker loop, until the coordinator stops it (an actor runs one call at a time: this is
                its only one)."""
                conns = []
                for stage in stages:
                    conn = connect_to(address, authkey=authkey)
                    where = (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
                    conn.send((stage["name"], os.getpid(), where))  # which stage this connection carries, and where
                    conns.append(conn)
                run_stage_worker(stages, conns, log_level)

        _ACTOR = StageWorker
    return _ACTOR


def _accept(listener: Listener, names: list[str]) -> tuple[list[Connection], int, tuple[str, str]]:
    """The actor's connections, one per stage, in the order of `names`; its pid, and its node's id and address."""
    conns: dict[str, Connection] = {}
    while len(conns) < len(names):
        conn = listener.accept()
        name, pid, node = conn.recv()
        conns[name] = conn
    return [conns[name] for name in names], pid, node


async def launch_ray_worker(
    stages: list[StageConfig],
    log_level: str,
    on_message: Callable[[str, FromWorker], None],
    on_closed: Callable[[str, WorkerHandle], None],
) -> list[WorkerHandle]:
    """Start one actor for `stages`, wait until it is placed, connected and loaded."""
    import ray

    names = [stage.name for stage in stages]
    options = _actor_options(stages)
    _check_placeable("+".join(names), options)
    authkey = secrets.token_bytes(32)
    listener = Listener((ray.util.get_node_ip_address(), 0), authkey=authkey)
    actor = _actor_class().options(name=f"omniserve-{'+'.join(names)}-{secrets.token_hex(4)}",
                                   **options).remote()
    run = actor.run.remote([stage.model_dump() for stage in stages], listener.address, authkey, log_level)
    accepting = asyncio.ensure_future(asyncio.to_thread(_accept, listener, names))
    ended = asyncio.wrap_future(run.future())
    try:
        await asyncio.wait({accepting, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not accepting.done():  # the actor ended before it connected: it could not start
            try:
                ended.result()
                reason = "the actor ended before it connected"
            except Exception as exc:  # noqa: BLE001 - Ray's error, reported in one line
                reason = str(exc).strip().splitlines()[-1]
            raise StageLoadError(f"stage {'+'.join(names)!r} failed to start on Ray: {reason}")
        conns, pid, node = accepting.result()
    finally:
        listener.close()  # no other connection is expected (and a pending accept gives up)
        if not accepting.done():
            accepting.cancel()
    process = ActorProcess(actor, run, pid, node)
    try:
        handles = await connect_worker(stages, conns, process, on_message, on_closed)
    except StageLoadError:
        process.kill()
        raise
    for handle in handles:
        handle.info["node"], handle.info["node_ip"] = node
    return handles

