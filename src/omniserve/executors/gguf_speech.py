"""What the GGUF voice models (Pocket TTS, Qwen3-TTS) share: a llama.cpp backbone with a KV stream (slot) of its
own for each sentence being spoken, so that a step is one `llama_decode` of one row per sentence with no cache to
stack, and libmtmd's audio generation (`mtmd_speech`) for the rest of the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from omniserve.executors.frame_speech import FrameSpeaker, _Job, _Settings, _Utterance, _Voice
from omniserve.executors.llamacpp.runtime import Batch, LlamaRuntime, decode_error
from omniserve.executors.mtmd_speech import AudioGeneration, seed_of


@dataclass
class SlotUtterance(_Utterance):
    slot: int = 0
    seed: int = 0  # the sentence's: each frame's draws are seeded from it and the frame's index
    condition: Any = None  # the backbone's last hidden state, which the next frame is sampled from
    next_row: Any = None  # the last frame as the backbone's next input row
    state: bytes | None = None  # the codec decoder's state


class GgufSpeaker(FrameSpeaker):
    architecture = ""  # the backbone's GGUF architecture, which is also libmtmd's name for the generation
    position_sections = 1  # positions per row: 4 for a backbone with M-RoPE (all four the same)

    def __init__(self, args: Any, stage: str = "talker"):
        super().__init__(args, stage)
        self._slots: list[int] = list(range(args.max_batch))[::-1]  # free KV streams
        self._sentences: dict[tuple[str, int], int] = {}  # per (request, choice): sentences started

    def _load_parts(self) -> None:
        """The backbone (its embeddings read out) and libmtmd's parts, from the args' model and projector."""
        a = self.args
        self.rt = rt = LlamaRuntime(a.model_path, context_length=a.context_length, slots=a.max_batch, n_batch=512,
                                    threads=a.threads, n_gpu_layers=a.n_gpu_layers, embeddings=True)
        if rt.meta("general.architecture") != self.architecture:
            raise RuntimeError(f"{a.model_path} is not a {self.model_name} backbone (its architecture is "
                               f"{rt.meta('general.architecture')})")
        self.gen = AudioGeneration(a.mmproj_path, rt.model, rt.n_embd, a.threads, a.n_gpu_layers != 0,
                                   self.architecture)

    def close(self) -> None:
        super().close()
        self.gen.close()
        self.rt.close()

    def _forget(self, request_id: str) -> None:
        self._sentences = {k: n for k, n in self._sentences.items() if k[0] != request_id}

    def _sentence_seed(self, job: _Job, voice: _Voice) -> int:
        """The seed of the choice's next sentence: the request's seed, the choice, and how many came before."""
        key = (job.request_id, voice.index)
        self._sentences[key] = index = self._sentences.get(key, -1) + 1
        settings = job.settings
        assert isinstance(settings, _Settings)
        return seed_of(settings.seed, voice.index, index)

    def _prefill(self, parts: list[Any]) -> tuple[int, int]:
        """A sentence's prompt, parts of tokens or of embedding rows, into a free slot: the slot and the position
        after the prompt. The last row's hidden state (and logits) are then the backbone's outputs."""
        slot = self._slots.pop()
        self.rt.trim_slot(slot, 0)
        position = 0
        try:
            for i, part in enumerate(parts):
                n, last = len(part), i == len(parts) - 1
                if isinstance(part, np.ndarray):
                    outputs = np.zeros(n, np.int8)
                    outputs[-1] = last
                    rc = self.rt.decode_rows(part.astype(np.float32),
                                             self._positions(np.arange(position, position + n)),
                                             np.full(n, slot, np.int32), outputs)
                else:
                    batch = Batch()
                    for k, token in enumerate(part):
                        batch.add(token, position + k, slot, last and k == n - 1)
                    rc = self.rt.decode(batch)
                if rc != 0:
                    raise decode_error(rc)
                position += n
        except Exception:
            self._slots.append(slot)
            raise
        return slot, position

    def _positions(self, positions: np.ndarray) -> np.ndarray:
        return np.tile(positions.astype(np.int32), (self.position_sections, 1))

    def _backbone_step(self) -> None:
        rows: list[SlotUtterance] = self._active  # type: ignore[assignment]
        n = len(rows)
        rc = self.rt.decode_rows(np.stack([u.next_row for u in rows]).astype(np.float32),
                                 self._positions(np.array([u.position for u in rows])),
                                 np.array([u.slot for u in rows], np.int32), np.ones(n, np.int8))
        if rc != 0:
            raise decode_error(rc)
        for i, u in enumerate(rows):
            u.position += 1
            u.condition = self.rt.embedding(i)
            self._stepped(u, i)

    def _stepped(self, u: SlotUtterance, batch_index: int) -> None:
        """What else a model reads of the step for a row (Qwen3-TTS: its logits)."""

    def _drop(self, leaving: list[_Utterance]) -> None:
        for u in leaving:
            assert isinstance(u, SlotUtterance)
            self.rt.trim_slot(u.slot, 0)
            self._slots.append(u.slot)
        super()._drop(leaving)
