"""Executor registry: name -> (class, validated argument model).

Modules are imported lazily so validating a config does not load a model
runtime.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

_EXECUTORS = {
    "llamacpp": ("omniserve.executors.llamacpp", "LlamaCppExecutor", "LlamaCppArgs"),
}


# Executors that implement `feed` (take an upstream stage's outputs on a graph edge).
_TAKES_UPSTREAM: set[str] = set()


def takes_upstream(name: str) -> bool:
    return name in _TAKES_UPSTREAM


def known_executors() -> list[str]:
    return sorted(_EXECUTORS)


def _lookup(name: str, attr_index: int):
    try:
        entry = _EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; known: {', '.join(known_executors())}") from None
    return getattr(importlib.import_module(entry[0]), entry[attr_index])


def executor_args_model(name: str) -> type[BaseModel]:
    return _lookup(name, 2)


def create_executor(name: str, args: dict):
    cls = _lookup(name, 1)
    return cls(executor_args_model(name).model_validate(args))
