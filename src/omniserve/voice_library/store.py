"""Consents and custom voices in SQLite under `--data-dir`, their recordings as files beside it, so that they
outlive the process.

A consent is a recording of a person saying the consent statement, with its transcript and the speaker's
embedding; a voice is a sample of that person's speech (and its transcript) made under one consent. Deleting
a consent deletes its recording and disables its voices (their samples are deleted too: no voice outlives the
consent it was made under). Several servers may share a data dir: SQLite (WAL, a busy timeout) orders their
writes, ids are random, and a file is written whole under a temporary name before its row names it. A write
the disk refuses is a `StorageFailed` (507) and changes nothing.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniserve.storage import DataDir

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS consents (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, language TEXT NOT NULL, created_at INTEGER NOT NULL,
        recording TEXT NOT NULL, transcript TEXT NOT NULL, embedding BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS voices (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, consent TEXT NOT NULL, created_at INTEGER NOT NULL,
        sample TEXT, ref_text TEXT NOT NULL, embedding BLOB NOT NULL, similarity REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0)""",
)


@dataclass(frozen=True)
class Consent:
    id: str
    name: str
    language: str
    created_at: int
    recording: str  # file name under the library's folder
    transcript: str
    embedding: np.ndarray


@dataclass(frozen=True)
class CustomVoice:
    id: str
    name: str
    consent: str
    created_at: int
    sample: str | None  # file name; None once its consent is deleted
    ref_text: str
    embedding: np.ndarray
    similarity: float  # the sample's speaker against the consent's
    disabled: bool


class VoiceLibrary:
    def __init__(self, folder: Path, data: DataDir | None = None):
        self.folder = folder
        self._data = data or DataDir(folder.parent)
        with self._writing("the voice library"):
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "library.sqlite3", check_same_thread=False, isolation_level=None,
                                       timeout=10)
            self._open()
        self._lock = threading.Lock()

    def _open(self) -> None:
        """WAL mode and the tables. Switching a new file to WAL takes an exclusive lock, and SQLite refuses it at
        once, without waiting out the busy timeout, while another process opens the same library: so it is
        tried again for as long as that timeout."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._db.close()

    def _writing(self, what: str):
        return self._data.writing(what, self.folder)

    def path(self, file: str) -> Path:
        return self.folder / file

    # ---- consents ------------------------------------------------------------------------------------------

    def add_consent(self, name: str, language: str, recording: bytes, suffix: str, transcript: str,
                    embedding: np.ndarray) -> Consent:
        consent = Consent(f"cons_{secrets.token_hex(12)}", name, language, int(time.time()), "", transcript,
                          embedding.astype(np.float32))
        with self._lock, self._writing("the consent recording"):
            file = self._write_file(consent.id, suffix, recording)
            try:
                self._db.execute("INSERT INTO consents VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (consent.id, name, language, consent.created_at, file, transcript,
                                  consent.embedding.tobytes()))
            except BaseException:
                self.path(file).unlink(missing_ok=True)
                raise
        return self.consent(consent.id)

    def consent(self, consent_id: str) -> Consent | None:
        row = self._db.execute("SELECT * FROM consents WHERE id = ?", (consent_id,)).fetchone()
        return Consent(*row[:6], np.frombuffer(row[6], np.float32)) if row else None

    def consents(self, after: str | None, limit: int) -> tuple[list[Consent], bool]:
        """A page of consents in the order they were made, after the consent `after` (KeyError: no such)."""
        where, args = "", []
        if after:
            anchor = self._db.execute("SELECT rowid FROM consents WHERE id = ?", (after,)).fetchone()
            if anchor is None:
                raise KeyError(after)
            where, args = "WHERE rowid > ?", [anchor[0]]
        ids = [r[0] for r in self._db.execute(f"SELECT id FROM consents {where} ORDER BY rowid LIMIT ?",
                                              (*args, limit + 1)).fetchall()]
        return [c for c in map(self.consent, ids[:limit]) if c is not None], len(ids) > limit

    def rename_consent(self, consent_id: str, name: str) -> Consent | None:
        with self._lock, self._writing("the consent"):
            self._db.execute("UPDATE consents SET name = ? WHERE id = ?", (name, consent_id))
        return self.consent(consent_id)

    def delete_consent(self, consent_id: str) -> bool:
        """Delete the consent and its recording; disable its voices and delete their samples."""
        consent = self.consent(consent_id)
        if consent is None:
            return False
        with self._lock, self._writing("the consent"):
            rows = self._db.execute("SELECT id, sample FROM voices WHERE consent = ?", (consent_id,)).fetchall()
            voice_ids, samples = [r[0] for r in rows], [r[1] for r in rows if r[1] is not None]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE voices SET disabled = 1, sample = NULL WHERE consent = ?", (consent_id,))
                self._db.execute("DELETE FROM consents WHERE id = ?", (consent_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for file in [consent.recording, *samples]:
            self.path(file).unlink(missing_ok=True)
        for voice_id in voice_ids:
            self._forget(voice_id)
        return True

    # ---- voices --------------------------------------------------------------------------------------------

    def add_voice(self, name: str, consent: Consent, sample: bytes, suffix: str, ref_text: str,
                  embedding: np.ndarray, similarity: float) -> CustomVoice:
        """A voice under `consent`; ValueError if an enabled voice has the name, or the consent is gone."""
        voice_id = f"voice_{secrets.token_hex(12)}"
        with self._lock, self._writing("the voice sample"):
            file = self._write_file(voice_id, suffix, sample)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM consents WHERE id = ?", (consent.id,)).fetchone() is None:
                    raise ValueError(f"consent {consent.id} was deleted")
                taken = self._db.execute("SELECT id FROM voices WHERE lower(name) = lower(?) AND disabled = 0",
                                         (name,)).fetchone()
                if taken is not None:
                    raise ValueError(f"the voice {taken[0]} is named {name!r} already; give another name")
                self._db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                                 (voice_id, name, consent.id, int(time.time()), file, ref_text,
                                  embedding.astype(np.float32).tobytes(), similarity))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self.path(file).unlink(missing_ok=True)
                raise
        return self.voice(voice_id)

    def voice(self, id_or_name: str) -> CustomVoice | None:
        """A voice by id, or by name (any case; an enabled one before a disabled one)."""
        row = self._db.execute("SELECT * FROM voices WHERE id = ?", (id_or_name,)).fetchone() or self._db.execute(
            "SELECT * FROM voices WHERE lower(name) = lower(?) ORDER BY disabled, rowid DESC LIMIT 1",
            (id_or_name,)).fetchone()
        if row is None:
            return None
        voice_id, name, consent, created, sample, ref_text, embedding, similarity, disabled = row
        return CustomVoice(voice_id, name, consent, created, sample, ref_text, np.frombuffer(embedding, np.float32),
                           similarity, bool(disabled))

    def voices(self) -> list[CustomVoice]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM voices ORDER BY rowid").fetchall()]
        return [v for v in map(self.voice, ids) if v is not None]

    def delete_voice(self, voice_id: str) -> bool:
        voice = self.voice(voice_id)
        if voice is None:
            return False
        with self._lock, self._writing("the voice"):
            self._db.execute("DELETE FROM voices WHERE id = ?", (voice.id,))
        if voice.sample:
            self.path(voice.sample).unlink(missing_ok=True)
        self._forget(voice.id)
        return True

    # ---- what voice models made of a voice ---------------------------------------------------------------

    def prepared_path(self, voice_id: str, key: str) -> Path:
        """Where a voice model keeps what it made of a voice's sample (its encoding), `key` naming the model."""
        return self.path(f"{voice_id}.{key}.prepared")

    def keep_prepared(self, voice_id: str, key: str, data: bytes) -> None:
        with self._writing("a prepared voice"):
            self._write_file(f"{voice_id}.{key}", ".prepared", data)

    def _forget(self, voice_id: str) -> None:
        """What voice models made of the voice goes with it."""
        for file in self.folder.glob(f"{voice_id}.*.prepared"):
            file.unlink(missing_ok=True)

    def _write_file(self, stem: str, suffix: str, data: bytes) -> str:
        """`data` whole under a new name, fsynced, before any row names it. Each writer has a partial file of its
        own: two voice models with the same codec (two stages on one GGUF) keep the same prepared voice at once."""
        name = f"{stem}{suffix}"
        partial = self.path(f".{name}.{secrets.token_hex(4)}.partial")
        with partial.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.path(name))
        return name
