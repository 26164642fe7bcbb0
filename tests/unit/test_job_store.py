"""The SQLite video job store: order, pages, updates, and what a restart requeues."""

from __future__ import annotations

import pytest

from omniserve.jobs.store import JobStore


def test_pages_and_order(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(5):
        store.create(f"v{i}", "m", "p", "64x64", "4", {"i": i})
    page, more = store.list(None, 2, "desc")
    assert [j.id for j in page] == ["v4", "v3"] and more
    page, more = store.list("v3", 10, "desc")
    assert [j.id for j in page] == ["v2", "v1", "v0"] and not more
    page, _ = store.list("v1", 2, "asc")
    assert [j.id for j in page] == ["v2", "v3"]
    with pytest.raises(KeyError):
        store.list("nope", 2, "asc")
    assert store.get("v2").params == {"i": 2}


def test_restart_requeues_unfinished_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for job_id, status in (("a", "completed"), ("b", "in_progress"), ("c", "queued"), ("d", "failed")):
        store.create(job_id, "m", "p", "64x64", "4", {})
        store.update(job_id, status=status, progress=40, error={"code": "x", "message": "y"} if status == "failed"
                     else None)
    store.close()
    again = JobStore(path)
    assert again.requeue_interrupted() == 2
    assert {j: again.get(j).status for j in "abcd"} == {"a": "completed", "b": "queued", "c": "queued",
                                                         "d": "failed"}
    assert again.get("b").progress == 0 and again.get("d").error == {"code": "x", "message": "y"}
    assert again.next_queued().id == "b" and again.count("queued") == 2
    again.delete("b")
    assert again.get("b") is None and again.next_queued().id == "c"
