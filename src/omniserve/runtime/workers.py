"""The stage workers a coordinator runs, and what state each is in: each stage's workers by replica (up,
starting, restarting and why, or given up on and why), and how many requests each holds. Health and
`/get_model_info` are read from here; the coordinator starts, restarts and drives the workers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from omniserve.config import PipelineConfig
from omniserve.errors import Unavailable
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.launcher import WorkerHandle

Replica = tuple[str, int]  # a stage, and which of its workers


class Workers:
    def __init__(self, pipeline: PipelineConfig):
        # each stage's workers, by replica (None: not started, restarting, or given up on)
        self.handles: dict[str, list[WorkerHandle | None]] = {
            s.name: [None] * s.placement.replicas for s in pipeline.stages}
        self.restarting: dict[Replica, str] = {}  # why
        self.failed: dict[Replica, str] = {}
        self.load: Counter[Replica] = Counter()  # requests each worker holds

    def live(self) -> list[tuple[Replica, WorkerHandle]]:
        return [((stage, i), handle) for stage, handles in self.handles.items()
                for i, handle in enumerate(handles) if handle is not None]

    def up(self, stage: str) -> int:
        return sum(handle is not None for handle in self.handles[stage])

    def problem(self, stage: str) -> str | None:
        """Why `stage` cannot take requests now (None: it can: one of its workers at least is up)."""
        if self.up(stage):
            return None
        replicas = [(stage, i) for i in range(len(self.handles[stage]))]
        if all(r in self.failed for r in replicas):
            return f"stage {stage!r} is down: {self.failed[replicas[0]]}"
        why = next((self.restarting[r] for r in replicas if r in self.restarting), None)
        if why is not None:
            return f"stage {stage!r} is restarting ({why}); retry shortly"
        return f"stage {stage!r} is starting"

    def healthy(self, stages: set[str] | frozenset[str] | None = None) -> bool:
        """Whether every stage (or each of `stages`) can take requests."""
        return all(self.problem(name) is None for name in (self.handles if stages is None else stages))

    def unhealthy_reason(self, stages: set[str] | frozenset[str] | None = None) -> str:
        names = self.handles if stages is None else stages
        return next((p for p in map(self.problem, sorted(names)) if p), "")

    def unavailable(self, stage: str) -> Unavailable:
        """What a request that `stage` cannot take now is answered."""
        return Unavailable(self.problem(stage) or f"stage {stage!r} is down")

    def state(self, replica: Replica) -> str:
        stage, i = replica
        if self.handles[stage][i] is not None:
            return "up"
        if replica in self.failed:
            return f"down: {self.failed[replica]}"
        if replica in self.restarting:
            return f"restarting: {self.restarting[replica]}"
        return "starting"

    def facts(self, stage: str) -> StageFacts:
        """What `stage`'s model said when it loaded (its first worker up; every replica loads the same)."""
        return next((handle.facts for handle in self.handles[stage] if handle is not None), StageFacts())

    def replica_info(self, replica: Replica) -> dict[str, Any]:
        handle = self.handles[replica[0]][replica[1]]
        facts = handle.facts if handle is not None else StageFacts()
        return {"replica": replica[1], "state": self.state(replica), "running": self.load[replica],
                "pid": facts.pid, "node": facts.node, "node_ip": facts.node_ip}
