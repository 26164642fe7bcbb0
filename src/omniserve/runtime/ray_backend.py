"""Stage workers as Ray actors (`--worker-backend ray`): the stages spread over the machines of a Ray cluster.

Each worker (one stage, or a process group's stages; each of their `replicas`) is one actor, placed by Ray from
its stages' `placement` (`num_cpus`, `num_gpus`, custom `resources`, which can pin it to a node). With the
pipeline's `placement_strategy`, every worker is reserved at once in one placement group (a bundle each, packed
or spread over the nodes) before any starts, and a restarted worker goes back to its bundle.

The actor runs the same worker loop as a local process; it connects back to the coordinator over TCP, one
authenticated `multiprocessing` connection per stage, and the coordinator drives those with the same
`PipeTransport` and typed messages as a local pipe. A large payload for the next stage (an image's latents,
embeddings) stays with the actor that made it; the message carries a `PayloadRef`, and the stage that reads it
fetches it from that actor through Ray's object store (`ObjectStoreCarrier`), not through the coordinator.

A dead actor (killed or crashed) closes its sockets, and the coordinator fails its requests and starts a new one,
as it does for a local process. One whose node is lost without a word closes nothing: Ray notices, ends the
actor's call, and its connections are closed here as if it had.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import secrets
import socket
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Client as connect_to
from multiprocessing.connection import Connection, Listener
from typing import Any

from omniserve.config import PipelineConfig, StageConfig
from omniserve.errors import ConfigError, OmniError
from omniserve.runtime.launcher import StageLoadError, WorkerHandle, WorkerSpec, connect_worker
from omniserve.runtime.types import OmniOutput, PayloadRef
from omniserve.runtime.worker import run_stage_worker

log = logging.getLogger(__name__)

NAMESPACE = "omniserve"


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
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: cannot join the Ray cluster: {exc}") from None


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class ActorProcess:
    """A worker that is a Ray actor, as the coordinator sees a worker process."""

    def __init__(self, actor: Any, run: Any, pid: int):
        self.actor, self.run, self.pid = actor, run, pid
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


def _wants(options: dict[str, Any]) -> dict[str, float]:
    """What a worker's actor asks for, as Ray's resource names (those it asks none of left out)."""
    wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
    return {name: amount for name, amount in wanted.items() if amount}


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def _check_placeable(names: str, options: dict[str, Any]) -> None:
    """Fail now, in one line, when no node of the cluster has what a worker asks for (Ray would wait forever)."""
    wanted = _wants(options)
    nodes = _alive_nodes()
    if any(all(node.get(name, 0) >= amount for name, amount in wanted.items()) for node in nodes):
        return
    short = next(name for name, amount in wanted.items() if all(node.get(name, 0) < amount for node in nodes)) \
        if nodes else "a node"
    have = max((node.get(short, 0) for node in nodes), default=0)
    raise StageLoadError(f"stage {names!r} cannot be placed on the Ray cluster: it needs {short} "
                         f"{wanted.get(short, 1):g} on one node, and the most any node has is {have:g}")


def _check_totals(workers: list[tuple[str, dict[str, Any], int]]) -> None:
    """Fail now, in one line, when the workers (name, options, replicas) ask for more of a resource together than
    the whole cluster has (each alone may fit; Ray would leave the last ones waiting forever)."""
    wanted: dict[str, float] = {}
    askers: dict[str, list[str]] = {}
    for names, options, replicas in workers:
        for name, amount in _wants(options).items():
            wanted[name] = wanted.get(name, 0.0) + amount * replicas
            askers.setdefault(name, []).append(f"{names} {replicas} × {amount:g}")
    nodes = _alive_nodes()
    for name, amount in wanted.items():
        have = sum(node.get(name, 0) for node in nodes)
        if amount > have + 1e-9:
            raise StageLoadError(f"the pipeline's workers need {name} {amount:g} in all ({', '.join(askers[name])}), "
                                 f"and the Ray cluster has {have:g}")


RESERVE_TIMEOUT_S = 60.0
PLACE_TIMEOUT_S = 120.0  # from asking for an actor to its first connection (before its model loads)
TOKEN_CPU = 0.01  # a bundle must hold something: what a worker that asks for nothing reserves in a placement group


def _bundle(options: dict[str, Any]) -> dict[str, float]:
    return _wants(options) or {"CPU": TOKEN_CPU}


def _check_strategy(strategy: str, bundles: list[dict[str, float]]) -> None:
    """Fail now, in one line, when the strict strategies cannot hold the bundles (Ray would wait forever)."""
    nodes = _alive_nodes()
    if strategy == "strict_spread" and len(bundles) > len(nodes):
        raise StageLoadError(f"placement_strategy strict_spread puts each of the pipeline's {len(bundles)} workers "
                             f"on a node of its own, and the Ray cluster has {len(nodes)} nodes")
    if strategy == "strict_pack":
        total: dict[str, float] = {}
        for bundle in bundles:
            for name, amount in bundle.items():
                total[name] = total.get(name, 0.0) + amount
        if not any(all(node.get(name, 0) >= amount for name, amount in total.items()) for node in nodes):
            need = ", ".join(f"{name} {amount:g}" for name, amount in total.items())
            raise StageLoadError(f"placement_strategy strict_pack puts the pipeline's {len(bundles)} workers on one "
                                 f"node, and no node of the Ray cluster has {need}")


class ObjectStoreCarrier:
    """An actor's large payloads (`min_bytes` pickled, or more) stay with it until each stage that reads them
    (`readers` per stage: its downstream edges) has fetched them through Ray's object store; one older than
    `KEEP_S` (its request went to fewer of them, or was aborted) goes when the actor next keeps one. The message to
    the coordinator carries a `PayloadRef`. It also fetches the ones this actor's stages read (blocking the worker
    loop meanwhile, as reading a large message would). `take` runs on the actor's second thread."""

    KEEP_S = 120.0
    FETCH_TIMEOUT_S = 60.0

    def __init__(self, holder: str, min_bytes: int, readers: dict[str, int]):
        self.holder, self.min_bytes, self.readers = holder, min_bytes, readers
        self._held: dict[str, tuple[bytes, int, float]] = {}  # key -> (pickled payload, fetches left, kept until)
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._holders: dict[str, Any] = {}  # actor name -> handle

    def outgoing(self, stage: str, outputs: list[OmniOutput]) -> list[OmniOutput]:
        readers = self.readers.get(stage, 0)
        return [self._leave(output, readers) if readers and output.payload is not None else output
                for output in outputs]

    def _leave(self, output: OmniOutput, readers: int) -> OmniOutput:
        data = pickle.dumps(output.payload, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) < self.min_bytes:
            return output
        key = f"{output.request_id}/{next(self._keys)}"
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, (_, _, until) in self._held.items() if until < now]:
                del self._held[stale]
            self._held[key] = (data, readers, now + self.KEEP_S)
        return replace(output, payload=PayloadRef(self.holder, key, len(data)))

    def take(self, key: str) -> bytes:
        with self._lock:
            data, left, until = self._held[key]
            if left > 1:
                self._held[key] = (data, left - 1, until)
            else:
                del self._held[key]
        return data

    def incoming(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        return [replace(output, payload=self._fetch(output.payload)) if isinstance(output.payload, PayloadRef)
                else output for output in outputs]

    def _fetch(self, ref: PayloadRef) -> Any:
        import ray

        try:
            if ref.holder not in self._holders:
                self._holders[ref.holder] = ray.get_actor(ref.holder, namespace=NAMESPACE)
            data = ray.get(self._holders[ref.holder].take_payload.remote(ref.key), timeout=self.FETCH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Ray's error, told in one line
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise OmniError(f"the upstream stage's output ({ref.nbytes} bytes) could not be fetched from its "
                            f"worker {ref.holder} ({reason}); retry the request") from None
        return pickle.loads(data)


_ACTOR = None


def _actor_class():
    """The actor class, made on first use (Ray is an optional dependency)."""
    global _ACTOR
    if _ACTOR is None:
        import ray

        @ray.remote(max_restarts=0, max_concurrency=2)
        class StageWorker:
            """Two threads: one runs the worker loop (`run`, its only call), the other hands out the payloads
            that loop leaves with its carrier (`take_payload`)."""

            def run(self, stages: list[dict[str, Any]], address: tuple[str, int], authkey: bytes,
                    log_level: str, carrier: tuple[str, int, dict[str, int]]) -> None:
                """The worker loop, until the coordinator stops it."""
                self.carrier = ObjectStoreCarrier(*carrier)
                conns = []
                for stage in stages:
                    conn = connect_to(address, authkey=authkey)
                    where = (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
                    conn.send((stage["name"], os.getpid(), where))  # which stage this connection carries, and where
                    conns.append(conn)
                run_stage_worker(stages, conns, log_level, self.carrier)

            def take_payload(self, key: str) -> bytes:
                return self.carrier.take(key)

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


class RayLauncher:
    """Starts the pipeline's workers as Ray actors (the coordinator's `launch`). With a `placement_strategy`, the
    first start reserves a bundle for every worker of the pipeline in one placement group, and each worker
    (and its restarts) goes into its own bundle."""

    def __init__(self, pipeline: PipelineConfig, object_store_min_bytes: int):
        self.pipeline = pipeline
        self.object_store_min_bytes = object_store_min_bytes
        self.placement_group: Any = None
        self._bundle_of: dict[tuple[str, int], int] = {}  # (a worker's first stage, replica) -> its bundle
        self._preparing = asyncio.Lock()
        self._prepared: StageLoadError | bool = False  # True once done; the error, if it failed

    async def _prepare(self) -> None:
        """Once, before the first worker starts (every worker calls it; the first does it): check that the cluster
        can hold each worker, and all of them together, then reserve the placement group if the pipeline asks for
        one. What the cluster cannot do fails every start in the same one line."""
        async with self._preparing:
            if self._prepared is False:
                try:
                    await self._check_and_reserve()
                    self._prepared = True
                except StageLoadError as exc:
                    self._prepared = exc
        if isinstance(self._prepared, StageLoadError):
            raise self._prepared

    async def _check_and_reserve(self) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        workers, bundles = [], []
        for group in self.pipeline.process_groups():
            names, options = "+".join(s.name for s in group), _actor_options(group)
            replicas = group[0].placement.replicas
            _check_placeable(names, options)
            workers.append((names, options, replicas))
            for replica in range(replicas):
                self._bundle_of[(group[0].name, replica)] = len(bundles)
                bundles.append(_bundle(options))
        _check_totals(workers)
        strategy = self.pipeline.placement_strategy
        if strategy is None:
            return
        _check_strategy(strategy, bundles)
        reserved = placement_group(bundles, strategy=strategy.upper(), name=f"omniserve-{secrets.token_hex(4)}")
        try:
            await asyncio.wait_for(asyncio.wrap_future(reserved.ready().future()), RESERVE_TIMEOUT_S)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            remove_placement_group(reserved)
            raise StageLoadError(f"the Ray cluster could not reserve the pipeline's {len(bundles)} workers "
                                 f"({strategy}) in {RESERVE_TIMEOUT_S:g} s: {bundles}") from None
        self.placement_group = reserved
        _log_placement(ray, reserved)

    def _scheduling(self, stages: list[StageConfig], replica: int) -> dict[str, Any]:
        if self.placement_group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self._bundle_of[(stages[0].name, replica)]
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.placement_group, bundle)}

    async def __call__(self, spec: WorkerSpec) -> list[WorkerHandle]:
        """Start one actor for the worker, wait until it is placed, connected and loaded."""
        await self._prepare()
        options = _actor_options(spec.stages)
        if self.placement_group is None:
            _check_placeable(spec.names, options)
        readers = {s.name: len(self.pipeline.downstream(s.name)) for s in spec.stages}
        return await _launch_actor(spec, {**options, **self._scheduling(spec.stages, spec.replica)},
                                   (self.object_store_min_bytes, readers))


def _log_placement(ray: Any, group: Any) -> None:
    """Say where each bundle went (a user reads this to see pack or spread at work)."""
    table = ray.util.placement_group_table(group)
    log.info("placement group %s (%s): bundles on nodes %s", table.get("name"), table.get("strategy"),
             table.get("bundles_to_node_id"))


async def _launch_actor(spec: WorkerSpec, options: dict[str, Any],
                        carrier: tuple[int, dict[str, int]]) -> list[WorkerHandle]:
    import ray

    names = [stage.name for stage in spec.stages]
    authkey = secrets.token_bytes(32)
    listener = Listener((ray.util.get_node_ip_address(), 0), authkey=authkey)
    name = f"omniserve-{spec.names}-{spec.replica}-{secrets.token_hex(4)}"
    actor = _actor_class().options(name=name, **options).remote()
    run = actor.run.remote([stage.model_dump() for stage in spec.stages], listener.address, authkey,
                           spec.log_level, (name, *carrier))
    accepting = asyncio.ensure_future(asyncio.to_thread(_accept, listener, names))
    accepting.add_done_callback(lambda f: f.cancelled() or f.exception())  # an unblocked accept's error is no news
    ended = asyncio.wrap_future(run.future())
    try:
        await asyncio.wait({accepting, ended}, timeout=PLACE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if not accepting.done():  # it ended before it connected, or was never placed: it holds nothing after this
            ray.kill(actor, no_restart=True)
            raise StageLoadError(f"stage {spec.names!r} failed to start on Ray: {_why_not_connected(ended)}")
        conns, pid, node = accepting.result()
    finally:
        if not accepting.done():
            _unblock(listener)
        listener.close()  # no other connection is expected
    process = ActorProcess(actor, run, pid)
    try:
        handles = await connect_worker(spec, conns, process)
    except StageLoadError:
        process.kill()
        raise
    for handle in handles:
        handle.facts = handle.facts.model_copy(update=dict(zip(("node", "node_ip"), node, strict=True)))
    # A node lost without a word (power, network) closes no socket; Ray notices, and ends the actor's call.
    loop = asyncio.get_running_loop()
    run.future().add_done_callback(lambda _: _lose_soon(loop, handles))
    return handles


def _why_not_connected(ended: asyncio.Future) -> str:
    if not ended.done():
        return (f"it was not placed within {PLACE_TIMEOUT_S:g} s (other actors hold what it asks for, or a node "
                "that has it is gone)")
    try:
        ended.result()
        return "the actor ended before it connected"
    except Exception as exc:  # noqa: BLE001 - Ray's error, reported in one line
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _unblock(listener: Listener) -> None:
    """Wake the thread blocked in `listener.accept()` (closing the listener does not): connect, and hang up."""
    try:
        socket.create_connection(listener.address, timeout=1).close()
    except OSError:
        pass


def _lose_soon(loop: asyncio.AbstractEventLoop, handles: list[WorkerHandle]) -> None:
    """From Ray's thread: tell the coordinator's loop that the actor's connections are gone."""
    def lose() -> None:
        for handle in handles:
            handle.transport.lost()

    try:
        loop.call_soon_threadsafe(lose)
    except RuntimeError:  # the server has shut down its loop: nobody is left to tell
        pass

