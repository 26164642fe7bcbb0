"""The video runner's loop when its store cannot be written: a job's outcome is kept until the store takes
it, the queue waits meanwhile, and the loop never dies. The store is the real SQLite one; its writes are
made to fail as a full disk makes them fail. The pipeline is left out (`_generate` writes a file)."""

from __future__ import annotations

import asyncio
import sqlite3

from omniserve.jobs import runner as runner_module
from omniserve.jobs.runner import VideoRunner
from omniserve.jobs.store import JobStore


class FlakyDisk:
    """Store writes fail (SQLITE_FULL) while `full` is set."""

    def __init__(self, store: JobStore):
        self.full = False
        self.refused = 0
        real = store._db

        class Db:
            def execute(db, sql, *args):
                if self.full and sql.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
                    self.refused += 1
                    raise sqlite3.OperationalError("database or disk is full")
                return real.execute(sql, *args)

        store._db = Db()


def test_an_outcome_the_store_refuses_is_written_later_and_the_queue_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "STORAGE_RETRY_S", 0.05)

    async def scenario():
        store = JobStore(tmp_path / "jobs.sqlite3")
        disk = FlakyDisk(store)
        runner = VideoRunner(store, client=None, folder=tmp_path / "videos")
        made = asyncio.Event()

        async def generate(job, partial):
            partial.write_bytes(b"mp4")
            if not made.is_set():
                disk.full = True  # the disk fills while the first job runs
                made.set()

        runner._generate = generate
        for job_id in ("a", "b"):
            store.create(job_id, "m", "p", "64x64", "1", {})
        runner.start()
        await asyncio.wait_for(made.wait(), 5)
        await asyncio.sleep(0.3)
        assert store.get("a").status == "in_progress" and store.get("b").status == "queued"
        assert disk.refused >= 3  # it kept trying
        waiting = asyncio.create_task(runner.wait("a"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        disk.full = False
        await asyncio.wait_for(waiting, 5)
        assert store.get("a").status == "completed" and (tmp_path / "videos" / "a.mp4").read_bytes() == b"mp4"
        await asyncio.wait_for(runner.wait("b"), 5)
        assert store.get("b").status == "completed"
        assert not runner._loop_task.done()
        await runner.stop()

    asyncio.run(scenario())
