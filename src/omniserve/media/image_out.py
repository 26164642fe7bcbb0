"""Images out: encode generated pixels as png, jpeg or webp at a chosen quality, and keep
`response_format: url` images on disk for a while.

Quality follows SGLang Diffusion's presets (maximum 100, high 90, medium 55,
low 35, default 75 for images); OpenAI's `quality` names map onto them, and
an explicit `output_compression` wins over both.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from omniserve.errors import InvalidRequest

OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
QUALITY_PRESETS = {"maximum": 100, "high": 90, "medium": 55, "low": 35, "default": 75,
                   "hd": 90, "standard": 75, "auto": 75}  # the last three: OpenAI's names


VIDEO_DEFAULT_QUALITY = 50


def encoding_quality(quality: str | None, compression: int | None, default: int = QUALITY_PRESETS["default"]) -> int:
    """`output_compression` if given, else the preset `quality` names, else `default`."""
    if compression is not None:
        return compression
    return QUALITY_PRESETS[quality] if quality and quality != "default" else default


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    """An RGB or RGBA array -> `fmt` bytes. `quality` (0-100) sets jpeg/webp quality and png effort."""
    pil_format, _ = OUTPUT_FORMATS[fmt]
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format=pil_format, compress_level=round(9 - quality * 9 / 100))
    else:
        if fmt == "jpeg" and image.mode == "RGBA":
            raise InvalidRequest("background: a transparent image needs output_format png or webp",
                                 param="background")
        image.save(out, format=pil_format, quality=max(1, quality))
    return out.getvalue()


class ImageStore:
    """Encoded images served at `/v1/images/{id}/content` until they are `ttl_s` old."""

    def __init__(self, folder: Path, ttl_s: float):
        self.folder = folder
        self.ttl_s = ttl_s

    def save(self, data: bytes, fmt: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.purge()
        image_id = f"img_{uuid.uuid4().hex}"
        partial = self.folder / f".{image_id}.{fmt}"
        partial.write_bytes(data)
        os.replace(partial, self.folder / f"{image_id}.{fmt}")
        return image_id

    def open(self, image_id: str) -> tuple[BinaryIO, str] | None:
        """The open file and media type of a stored image, if it exists and has not expired. Open: a purge
        or expiry that removes it meanwhile cannot cut its download short."""
        if not image_id.startswith("img_") or not image_id[4:].isalnum():
            return None
        for fmt, (_, media_type) in OUTPUT_FORMATS.items():
            try:
                file = (self.folder / f"{image_id}.{fmt}").open("rb")
            except (FileNotFoundError, IsADirectoryError):
                continue
            if time.time() - os.fstat(file.fileno()).st_mtime < self.ttl_s:
                return file, media_type
            file.close()
        return None

    def purge(self) -> None:
        cutoff = time.time() - self.ttl_s
        for path in self.folder.glob("img_*"):
            with contextlib.suppress(FileNotFoundError):  # another request's purge may be at it too
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
