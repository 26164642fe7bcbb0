"""The server's `--data-dir`, where video jobs, their mp4s and stored images are written.

It is checked at start (a folder the server cannot write fails the start in one line, before any
model loads). While serving, a write that fails because the disk is full or the folder became
read-only is a `StorageFailed` (507) for that request alone; what is stored stays as it was, the
rest of the server serves, and `/health` says what is wrong until a write succeeds again."""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from omniserve.errors import ConfigError, StorageFailed

log = logging.getLogger(__name__)

# what a write can meet that is about the disk, not the request or a bug
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def storage_failure(exc: BaseException, folder: Path, what: str) -> StorageFailed | None:
    """The error to answer for `exc`, met while writing `what` under `folder`; None if it is not the storage's."""
    if isinstance(exc, sqlite3.Error):
        full = getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc)
        reason = None if full else str(exc)
    elif isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        reason = None if full else exc.strerror or str(exc)
    else:
        return None
    if reason is None:
        return StorageFailed(f"the disk holding {folder} is full: {what} could not be written; free some space "
                             "(what is already stored is kept)", code="disk_full")
    return StorageFailed(f"{folder} cannot be written ({reason}): {what} could not be stored; what is already "
                         "stored is kept")


class DataDir:
    def __init__(self, path: Path):
        self.path = path
        self.problem: str | None = None  # the last write's failure, until one succeeds

    def check(self) -> None:
        """The folder exists, or can be made, and takes a file; else the start fails in one line."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise ConfigError(f"--data-dir {self.path} cannot be written ({exc.strerror or exc}): give a folder this "
                              "user can write, where video jobs and stored images are kept") from None

    @contextlib.contextmanager
    def writing(self, what: str, folder: Path | None = None) -> Iterator[None]:
        """Turn a storage failure while writing `what` into a StorageFailed, and remember it for /health."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            failure = storage_failure(exc, folder or self.path, what)
            if failure is None:
                raise
            if failure.message != self.problem:
                log.warning("%s", failure.message)
            self.problem = failure.message
            raise failure from None
        if self.problem is not None:
            log.info("%s can be written again", self.path)
            self.problem = None
