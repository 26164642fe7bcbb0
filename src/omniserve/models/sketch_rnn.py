"""sketch-rnn (Magenta, Ha & Eck 2017): a prompt's category -> a line drawing.

Decoder-only models trained on Quick, Draw! doodles, one file per category
(`<category>.gen.json`, see the README beside the weights). Each is a
512-unit LSTM whose output is a 20-component Gaussian mixture over the next
pen offset plus a pen state; sampling it stroke by stroke gives a vector
drawing, which we render with PIL. numpy only, about 10 ms per drawing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Everyday words for categories whose file name does not say them.
SYNONYMS = {
    "bike": "bicycle", "cycle": "bicycle", "puppy": "dog", "doggy": "dog", "bunny": "rabbit", "hare": "rabbit",
    "lamb": "sheep", "ape": "monkey", "chimp": "monkey", "rhino": "rhinoceros", "ant": "antyoga",
    "yoga": "antyoga", "swimming pool": "pool", "palm": "palm_tree", "coaster": "roller_coaster",
    "ambulances": "ambulance", "digger": "bulldozer", "lamp": "lantern", "trumpet": "trombone",
    "springboard": "diving_board", "crayfish": "lobster", "porpoise": "dolphin", "gnat": "mosquito",
}


@dataclass
class Stroke:
    """Pen offsets (dx, dy, in pixels of the training data) and whether the pen drew them."""

    offsets: np.ndarray  # (n, 2) float
    pen_down: np.ndarray  # (n,) bool: the segment ending at point k is drawn


class SketchModel:
    def __init__(self, path: Path):
        info, dims, blobs = json.loads(path.read_text())
        weights = [np.frombuffer(base64.b64decode(b), "<i2").astype(np.float32).reshape(d) / 32767 * 10.0
                   for d, b in zip(dims, blobs, strict=True)]
        self.w_out, self.b_out, w_xh, w_hh, self.bias = weights
        self.w_full = np.concatenate([w_xh, w_hh], 0)
        self.max_len = int(info["max_seq_len"])
        self.scale = float(info["scale_factor"])
        self.units = w_hh.shape[0]

    def sample(self, rng: np.random.Generator, temperature: float = 0.4) -> Stroke:
        h = np.zeros(self.units, np.float32)
        c = np.zeros(self.units, np.float32)
        x = np.zeros(5, np.float32)
        offsets, downs = [], []
        down = True  # the state before the first point counts as pen down
        for _ in range(self.max_len):
            gates = np.concatenate([x, h]) @ self.w_full + self.bias
            i, g, f, o = np.split(gates, 4)
            c = c * _sigmoid(f + 1.0) + np.tanh(g) * _sigmoid(i)
            h = np.tanh(c) * _sigmoid(o)
            y = h @ self.w_out + self.b_out
            pen = _tempered(_softmax(y[:3]), temperature)
            pi, mu_x, mu_y, log_sx, log_sy, rho = np.split(y[3:], 6)
            k = rng.choice(len(pi), p=_tempered(_softmax(pi), temperature))
            sx, sy = np.exp(log_sx[k]) * np.sqrt(temperature), np.exp(log_sy[k]) * np.sqrt(temperature)
            r = np.tanh(rho[k])
            cov = [[sx * sx, r * sx * sy], [r * sx * sy, sy * sy]]
            dx, dy = rng.multivariate_normal([mu_x[k], mu_y[k]], cov)
            state = rng.choice(3, p=pen)
            if state == 2:
                break
            offsets.append((dx * self.scale, dy * self.scale))
            downs.append(down)
            down = state == 0
            x = np.array([dx, dy, state == 0, state == 1, 0], np.float32)
        return Stroke(np.array(offsets, np.float32).reshape(-1, 2), np.array(downs, bool))


# A prompt that names no category by word maps to the nearest one by meaning, if this close
# (cosine of MiniLM embeddings, the prompt without its request words): "a canine" 0.67 -> dog,
# "a crustacean" 0.53 -> lobster, "thunderstorm" 0.38 -> rain; "draw a boat" 0.35, "a horse"
# 0.35, "a car" 0.27, "the stock market" 0.10 -> none.
MIN_SIMILARITY = 0.37
REQUEST_WORDS = {"draw", "drawing", "sketch", "paint", "painting", "picture", "image", "photo", "please", "me",
                 "make", "show", "create", "generate"}


class SketchRnn:
    """All categories in a folder; each model loads on first use. `embed` (texts -> unit
    vectors) lets prompts match a category by meaning when no word names one."""

    def __init__(self, folder: Path, embed: Callable[[list[str]], np.ndarray] | None = None):
        self.folder = folder
        self.categories = sorted(p.name.removesuffix(".gen.json") for p in folder.glob("*.gen.json"))
        if not self.categories:
            raise FileNotFoundError(f"{folder} holds no sketch-rnn *.gen.json files")
        self._models: dict[str, SketchModel] = {}
        self._embed = embed
        self._vectors = embed([f"a drawing of a {_spoken(c)}" for c in self.categories]) if embed else None

    def model(self, category: str) -> SketchModel:
        if category not in self._models:
            self._models[category] = SketchModel(self.folder / f"{category}.gen.json")
        return self._models[category]

    def match(self, prompt: str, strict: bool = True) -> str | None:
        """The category a prompt names (see `match_words`), else the one nearest in meaning: only if
        it is near enough when `strict`, whatever it is otherwise (None: no match)."""
        found = self.match_words(prompt)
        if found is not None or self._embed is None:
            return found
        subject = " ".join(w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in REQUEST_WORDS)
        if not subject and strict:
            return None
        similarity = self._vectors @ self._embed([subject or prompt])[0]
        best = int(similarity.argmax())
        return self.categories[best] if similarity[best] >= MIN_SIMILARITY or not strict else None

    def match_words(self, prompt: str) -> str | None:
        """The category or synonym a prompt names as whole words, plural or not; the first
        one in the prompt wins."""
        text = " " + " ".join(re.findall(r"[a-z]+", prompt.lower())) + " "
        names = {c.replace("_", " "): c for c in self.categories}
        names.update({w: c for w, c in SYNONYMS.items() if c in self.categories})
        found = []
        for name, category in names.items():
            for form in (name, name + "s", name + "es"):
                at = text.find(f" {form} ")
                if at >= 0:
                    found.append((at, -len(name), category))
        return min(found)[2] if found else None


def render(stroke: Stroke, width: int, height: int, line_width: int | None = None,
           background: tuple[int, ...] = (255, 255, 255), ink: tuple[int, ...] = (0, 0, 0),
           upto: int | None = None, mode: str = "RGB") -> Image.Image:
    """The drawing fitted into a width x height canvas with a margin; `upto` draws only the
    first points (for animating it stroke by stroke)."""
    image = Image.new(mode, (width, height), background)
    points = np.cumsum(np.vstack([[0, 0], stroke.offsets]), axis=0)
    if len(points) < 2:
        return image
    low, high = points.min(0), points.max(0)
    margin = 0.08 * min(width, height)
    scale = min((width - 2 * margin) / max(high[0] - low[0], 1e-6), (height - 2 * margin) / max(high[1] - low[1], 1e-6))
    centre = (np.array([width, height]) - (high - low) * scale) / 2
    xy = (points - low) * scale + centre
    draw = ImageDraw.Draw(image)
    line_width = line_width or max(1, round(min(width, height) / 128))
    last = len(points) if upto is None else min(upto + 1, len(points))
    for k in range(1, last):
        if stroke.pen_down[k - 1]:
            draw.line([tuple(xy[k - 1]), tuple(xy[k])], fill=ink, width=line_width)
    return image


def _spoken(category: str) -> str:
    return "an ant doing yoga" if category == "antyoga" else category.replace("_", " ")


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    logp = np.log(np.maximum(p, 1e-12)) / (0.5 + 0.5 * temperature)
    return _softmax(logp)
