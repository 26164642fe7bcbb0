"""Images in: any still image Pillow reads -> an RGB uint8 array, under a pixel limit.

The pixel count is checked from the header before anything is decoded, so a
decompression bomb (a tiny file that claims a huge canvas) is a 400, never
an out-of-memory crash. Truncated or undecodable data is a 400 as well.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from omniserve.errors import InvalidRequest

INPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def decode_image(data: bytes, *, where: str, max_pixels: int, alpha: bool = False) -> np.ndarray:
    """Image bytes -> an (H, W, 3) uint8 array, or (H, W, 4) with `alpha`. Bad input is a 400
    naming `where`."""
    formats = ", ".join(INPUT_FORMATS.values())
    if not data:
        raise InvalidRequest(f"{where}: the image is empty; send one of: {formats}", param=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(INPUT_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"{where}: the image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (--max-image-pixels)", param=where)
            image.load()
            return np.asarray(image.convert("RGBA" if alpha else "RGB"))
    except Image.DecompressionBombError as exc:  # Pillow's own guard, for canvases far past any sane limit
        claimed = str(exc).split("(", 1)[-1].split(" pixels", 1)[0]
        raise InvalidRequest(f"{where}: the image claims {claimed} pixels, over the limit of {max_pixels} "
                             "(--max-image-pixels)", param=where) from None
    except UnidentifiedImageError:
        raise InvalidRequest(f"{where}: the data is not an image this server reads; send one of: {formats}",
                             param=where) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"{where}: could not decode the image ({exc}); it may be truncated", param=where) from None
