"""A stage's executor may be a class named by import path, `package.module:Class`: its spec comes from the
registered executor it subclasses and from what it declares, and a path that does not name an executor is a
config error that says why."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from omniserve.config import validate_pipeline
from omniserve.errors import ConfigError
from omniserve.executors import create_executor, executor_args_model, request_params_model, spec
from omniserve.executors.base import EmbeddingParams, Executor
from omniserve.executors.llamacpp import LlamaCppArgs
from tests.fixtures.failing_llamacpp import FailingLlamaCppExecutor

HERE = __name__


class SizeArgs(BaseModel):
    size: int = 1


class Declared(Executor):
    """An executor of its own: it declares its spec."""

    args_model = SizeArgs
    reads = ("image",)
    makes = ("text",)


class Fed(Declared):
    def feed(self, outputs):
        return []


class TextOnly(FailingLlamaCppExecutor):
    makes = ("text",)


class Bare(Executor):
    pass


class NotAnExecutor:
    args_model = SizeArgs


class ArgsNotAModel(Executor):
    args_model = dict


class MakesAString(Declared):
    makes = "text"


def test_a_subclass_of_a_registered_executor_keeps_its_spec_and_overrides_what_it_declares():
    failing = spec(f"{FailingLlamaCppExecutor.__module__}:FailingLlamaCppExecutor")
    llamacpp = spec("llamacpp")
    assert (failing.reads, failing.makes, failing.takes_upstream) == (llamacpp.reads, llamacpp.makes, True)
    assert executor_args_model(f"{HERE}:TextOnly") is LlamaCppArgs
    assert request_params_model(f"{HERE}:TextOnly") is EmbeddingParams
    assert spec(f"{HERE}:TextOnly").makes == ("text",)
    assert spec("omniserve.executors.piper:PiperExecutor").makes == spec("piper").makes  # a registered one by path


def test_a_class_of_its_own_declares_its_spec_and_takes_upstream_outputs_if_it_implements_feed():
    declared = spec(f"{HERE}:Declared")
    assert (declared.reads, declared.makes, declared.takes_upstream) == (("image",), ("text",), False)
    assert request_params_model(f"{HERE}:Declared") is None
    assert spec(f"{HERE}:Fed").takes_upstream
    executor = create_executor(f"{HERE}:Declared", {"size": 3}, "painter")
    assert type(executor) is Declared and executor.args == SizeArgs(size=3) and executor.stage == "painter"


def stage(executor: str, **more) -> dict:
    return {"stages": [{"name": "s", "executor": executor, **more}]}


@pytest.fixture()
def broken_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "broken_executor_module.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken_executor_module"


def test_a_path_that_names_no_executor_is_a_config_error_saying_why(broken_module):
    cases = {
        "nope": ["unknown executor 'nope'; known: ", "llamacpp", "or a class of your own by its import path"],
        "no_such_package.module:Class": ["no module named 'no_such_package' (is it installed, or on PYTHONPATH?)"],
        f"{broken_module}:Class": [f"importing {broken_module} failed (RuntimeError: no GPU here)"],
        f"{HERE}:Missing": [f"module {HERE} has no 'Missing'"],
        f"{HERE}:NotAnExecutor": ["is not an Executor subclass"],
        f"{HERE}:Bare": ["subclasses no registered executor, so it must declare `args_model`"],
        f"{HERE}:": ["give a class by its import path, package.module:Class"],
        f"{HERE}:ArgsNotAModel": ["its `args_model` must be a pydantic model class"],
        f"{HERE}:MakesAString": ["its `makes` must be a tuple of kinds"],
    }
    for executor, says in cases.items():
        with pytest.raises(ConfigError) as info:
            validate_pipeline(stage(executor))
        message = str(info.value)
        assert message.startswith("config: stages.s.executor: ") and all(part in message for part in says), message


def test_a_custom_executor_s_args_and_edges_are_checked_like_any_other():
    with pytest.raises(ConfigError, match="stages.s.args.size"):
        validate_pipeline(stage(f"{HERE}:Declared", args={"size": "big"}))
    with pytest.raises(ConfigError, match="takes no upstream input"):
        validate_pipeline({"stages": [{"name": "a", "executor": f"{HERE}:Fed"},
                                      {"name": "b", "executor": f"{HERE}:Declared"}],
                           "edges": [{"src": "a", "dst": "b"}]})
    p = validate_pipeline({"stages": [{"name": "a", "executor": f"{HERE}:Declared"},
                                      {"name": "b", "executor": f"{HERE}:Fed"}],
                           "edges": [{"src": "a", "dst": "b"}]})
    assert p.stage("a").args == {"size": 1}
