"""What a consent recording must say, and how closely what was heard must match it.

The speech-to-text stage transcribes the recording; the statement is said when at least `MIN_SAID` of its
words appear in the transcript in order (small slips of the ASR pass, another sentence does not). The
speaker check compares speaker embeddings (cosine) against `--voice-match-threshold`."""

from __future__ import annotations

import re

import numpy as np

MIN_SAID = 0.8

# The statement per language (BCP 47 primary tag). English is OpenAI's; the others say the same.
STATEMENTS = {
    "en": "I am aware that recordings of my voice will be used to create and use a synthetic version of my voice.",
    "es": "Soy consciente de que las grabaciones de mi voz se utilizarán para crear y usar una versión sintética "
          "de mi voz.",
    "fr": "Je suis conscient que les enregistrements de ma voix seront utilisés pour créer et utiliser une version "
          "synthétique de ma voix.",
    "de": "Mir ist bewusst, dass Aufnahmen meiner Stimme verwendet werden, um eine synthetische Version meiner "
          "Stimme zu erstellen und zu nutzen.",
    "it": "Sono consapevole che le registrazioni della mia voce saranno utilizzate per creare e usare una versione "
          "sintetica della mia voce.",
    "pt": "Estou ciente de que as gravações da minha voz serão usadas para criar e usar uma versão sintética da "
          "minha voz.",
}


def statement_for(language: str) -> str | None:
    """The statement for a BCP 47 tag (`en-US` -> English), None if there is none for it."""
    return STATEMENTS.get(language.strip().lower().replace("_", "-").split("-")[0])


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def said_fraction(transcript: str, statement: str) -> float:
    """The share of the statement's words that the transcript has in the same order (longest common
    subsequence of words)."""
    want, heard = words(statement), words(transcript)
    if not want:
        return 1.0
    row = [0] * (len(heard) + 1)
    for w in want:
        previous = 0
        for j, h in enumerate(heard, 1):
            current = row[j]
            row[j] = previous + 1 if w == h else max(row[j], row[j - 1])
            previous = current
    return row[-1] / len(want)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two speaker embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
