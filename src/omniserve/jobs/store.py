"""Video jobs in SQLite under `--data-dir`, so they outlive the process.

A job is a row: its request, status (`queued` -> `in_progress` -> `completed`
| `failed`), progress, error and result file. The store is the only place job
state lives; the runner and the API read and write it here. On start-up,
jobs a previous process left `queued` or `in_progress` go back to the queue
(they are run again from the start), so no job is ever lost. A write the disk
refuses (full, read-only) is a `StorageFailed` and changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniserve.storage import DataDir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    prompt TEXT,
    size TEXT NOT NULL,
    seconds TEXT NOT NULL,
    params TEXT NOT NULL,
    error TEXT,
    file TEXT
)
"""


@dataclass
class VideoJob:
    id: str
    seq: int
    model: str
    status: str
    progress: int
    created_at: int
    completed_at: int | None
    prompt: str | None
    size: str
    seconds: str
    params: dict[str, Any]
    error: dict[str, str] | None
    file: str | None


class JobStore:
    def __init__(self, path: Path, data: DataDir | None = None):
        self._data = data or DataDir(path.parent)
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def _writing(self):
        return self._data.writing("the video job")

    def close(self) -> None:
        self._db.close()

    def create(self, job_id: str, model: str, prompt: str | None, size: str, seconds: str,
               params: dict[str, Any]) -> VideoJob:
        with self._lock, self._writing():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM videos").fetchone()[0]
            self._db.execute(
                "INSERT INTO videos (id, seq, model, status, created_at, prompt, size, seconds, params) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, seq, model, int(time.time()), prompt, size, seconds, json.dumps(params)))
        return self.get(job_id)

    def get(self, job_id: str) -> VideoJob | None:
        row = self._db.execute("SELECT * FROM videos WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(self, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        """A page of jobs in creation order (`asc`) or newest first (`desc`), after the job `after`."""
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = "", []
        if after:
            anchor = self.get(after)
            if anchor is None:
                raise KeyError(after)
            where, args = f"WHERE seq {op} ?", [anchor.seq]
        rows = self._db.execute(f"SELECT * FROM videos {where} ORDER BY seq {direction} LIMIT ?",
                                (*args, limit + 1)).fetchall()
        return [self._job(r) for r in rows[:limit]], len(rows) > limit

    def count(self, status: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM videos WHERE status = ?", (status,)).fetchone()[0]

    def next_queued(self) -> VideoJob | None:
        row = self._db.execute("SELECT * FROM videos WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
        return self._job(row) if row else None

    def update(self, job_id: str, **fields: Any) -> None:
        if "error" in fields and fields["error"] is not None:
            fields["error"] = json.dumps(fields["error"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._writing():
            self._db.execute(f"UPDATE videos SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    def delete(self, job_id: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM videos WHERE id = ?", (job_id,))

    def requeue_interrupted(self) -> int:
        """Jobs a previous process did not finish go back to the queue, from the start."""
        with self._writing():
            return self._db.execute("UPDATE videos SET status = 'queued', progress = 0 "
                                    "WHERE status IN ('queued', 'in_progress')").rowcount

    @staticmethod
    def _job(row: tuple) -> VideoJob:
        (job_id, seq, model, status, progress, created_at, completed_at, prompt, size, seconds, params, error,
         file) = row
        return VideoJob(job_id, seq, model, status, progress, created_at, completed_at, prompt, size, seconds,
                        json.loads(params), json.loads(error) if error else None, file)
