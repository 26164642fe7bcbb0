"""The talker of a Qwen2.5-Omni checkpoint: codec tokens from the thinker's hidden states, as they arrive.

It starts as soon as the thinker has fed its first answer token (the prompt's states plus that token's),
and takes one more of the thinker's states per step after that, then the text-end and text-pad
embeddings, exactly as transformers' `generate(return_audio=True)` lays them out, so its tokens are
transformers' tokens. Each token goes on to code2wav at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import Executor, StepResult, request_params
from omniserve.executors.qwen_omni.runtime import LoadedPart, OmniStageArgs, Sampler, failure, read_speakers
from omniserve.executors.qwen_omni.thinker import ReplyStates, TalkerStart
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, OmniRequest, SamplingParams

TalkerArgs = OmniStageArgs


class VoiceParams(BaseModel):
    """What a request may set for the talker and code2wav stages (`stage_sampling.talker`, `audio.voice`).
    Left out, sampling takes the talker's own defaults (transformers' `generate` for this model)."""

    model_config = ConfigDict(extra="forbid")

    voice: str | None = None
    choices: int = Field(1, ge=1, le=1, description="a Qwen-Omni answer has one choice")
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    max_tokens: int = Field(4096, ge=1, le=32768)  # codec tokens (Qwen3-Omni: codec frames)
    ignore_eos: bool = False  # speak exactly max_tokens codec tokens (benchmarks)
    speed: float = Field(1.0, ge=1.0, le=1.0, description="this voice speaks at one speed")
    noise_scale: None = None
    noise_w_scale: None = None


def voice_of(params: VoiceParams, speakers: dict[str, Any], default: str) -> str:
    """The speaker a request picked (case-insensitive), or a 400 listing them."""
    wanted = params.voice or default
    name = next((s for s in speakers if s.lower() == wanted.lower()), None)
    if name is None:
        raise InvalidRequest(f"voice: unknown voice {wanted!r}; this model speaks as {', '.join(speakers)}",
                             param="voice")
    return name


@dataclass
class _Voice:
    request_id: str
    speaker: str
    sampler: Sampler
    max_tokens: int
    start: TalkerStart | None = None
    reply: list[np.ndarray] = field(default_factory=list)  # the thinker's states for answer tokens 0, 1, ...
    reply_final: bool = False
    steps: int = 0  # forward passes so far (0: not prefilled)
    row: int = -1  # its row of the attention cache (`slots.py`), once prefilled
    rope_delta: Any = None
    seen: list[int] = field(default_factory=list)  # the talker's input ids (for the repetition penalty)
    codes: list[int] = field(default_factory=list)
    text: str = ""  # the thinker's text not passed on yet


class QwenOmniTalkerExecutor(Executor):
    # what transformers' generate(return_audio=True) samples the talker with, unless a request says otherwise
    SAMPLING = {"temperature": 0.9, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.05}

    def __init__(self, args: TalkerArgs, stage: str = "talker"):
        super().__init__(args, stage)
        self._voices: dict[str, _Voice] = {}

    def load(self) -> StageFacts:
        import torch

        self.torch = torch
        part = LoadedPart(self.args, "talker")
        self.part, self.model, self.device = part, part.model, part.device
        self._slots()
        self.speakers = read_speakers(part.checkpoint.path)
        self.default_voice = next(iter(self.speakers)) if part.family.default_voice not in self.speakers \
            else part.family.default_voice
        talker = part.config.talker_config
        self.codec = {"bos": talker.tts_codec_start_token_id, "eos": talker.tts_codec_end_token_id,
                      "pad": talker.tts_codec_pad_token_id, "mask": talker.tts_codec_mask_token_id}
        self.text_ids = {"eos": talker.tts_text_end_token_id, "pad": talker.tts_text_pad_token_id}
        return part.facts(voices=list(self.speakers), sample_rate=part.family.sample_rate)

    def _slots(self) -> None:
        from omniserve.executors.qwen_omni.slots import SlotKV

        self.slots = SlotKV(len(self.model.model.layers))

    def _cached(self, v: _Voice) -> int:
        """The tokens in a voice's row between steps: all it has seen but the code it feeds next."""
        return len(v.seen) - 1

    def _free_rows(self) -> None:
        self.slots.keep(lambda v: self._voices.get(v.request_id) is v, self._cached)

    def close(self) -> None:
        self._voices.clear()
        if hasattr(self, "slots"):
            self.slots.clear()

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(VoiceParams, request.params_for(self.stage))
        speaker = voice_of(params, self.speakers, self.default_voice)
        self._voices[request.request_id] = self._voice(request.request_id, speaker, params)
        return [OmniOutput(request.request_id, started=True)]

    def _sampling(self, params: VoiceParams) -> SamplingParams:
        """The request's talker sampling, this model's defaults where it says nothing."""
        chosen = {name: default if getattr(params, name) is None else getattr(params, name)
                  for name, default in self.SAMPLING.items()}
        return SamplingParams(**chosen, seed=params.seed)

    def _voice(self, request_id: str, speaker: str, params: VoiceParams) -> _Voice:
        stops = [self.codec["eos"], self.codec["pad"]] if params.ignore_eos else []
        sampler = Sampler(self._sampling(params), self.device, suppress=[self.codec["bos"], *stops])
        return _Voice(request_id, speaker, sampler, params.max_tokens)

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        ended = []
        for out in outputs:
            voice = self._voices.get(out.request_id)
            if voice is None:
                continue
            voice.text += out.text
            for item in out.payload or []:
                if isinstance(item, TalkerStart):
                    voice.start = item
                elif isinstance(item, ReplyStates):
                    voice.reply += item.states
                    voice.reply_final = voice.reply_final or item.final
            if out.done and not voice.reply_final:  # the thinker ended without states: nothing to say
                voice.reply_final = True
            if voice.reply_final and voice.steps == 0 and not voice.reply:
                ended.append(self._finish(voice))
        return ended

    def abort(self, request_id: str) -> None:
        self._voices.pop(request_id, None)
        self._free_rows()

    def has_work(self) -> bool:
        return any(self._ready(v) for v in self._voices.values())

    def _ready(self, voice: _Voice) -> bool:
        if voice.steps == 0:
            return voice.start is not None and bool(voice.reply)
        return voice.steps < len(voice.reply) or voice.reply_final

    def step(self) -> StepResult:
        """Start the requests whose first states arrived, then one codec token for each of the others, in
        one forward pass."""
        ready = [v for v in self._voices.values() if self._ready(v)]
        outputs = []
        decoding = [v for v in ready if v.steps > 0]
        with self.torch.no_grad():
            for voice in ready:
                if voice.steps == 0:
                    try:
                        outputs.append(self._prefill(voice))
                    except Exception as exc:  # this request's alone
                        self._fail([voice], exc)
            if decoding:
                try:
                    outputs += self._decode(decoding)
                except Exception as exc:  # the batch's: each of its requests fails, the stage goes on
                    self._fail(decoding, exc)
            self._free_rows()
        return self.result(outputs, max(1, len(ready)))

    def _fail(self, voices: list[_Voice], exc: Exception) -> None:
        for voice in voices:
            self._voices.pop(voice.request_id, None)
            self.fail(voice.request_id, failure(exc))

    def _prefill(self, v: _Voice) -> OmniOutput:
        """The prompt's states, the speaker's text-start token and the first answer token's states, laid out
        as transformers' talker takes them."""
        torch = self.torch
        model, embed, start = self.model, self.model.get_input_embeddings(), v.start
        bos_text = self.speakers[v.speaker]["bos_token"]
        rows = [start.prompt, start.special_embeds[bos_text][None], v.reply[0][None]]
        embeds = torch.from_numpy(np.concatenate(rows)).to(self.device, model.dtype)[None]
        codec = torch.tensor([self.codec["bos"], self.codec["pad"]], device=self.device)
        embeds[:, -1, :] += embed(codec[:1])[0]
        embeds[:, -2, :] += embed(codec[1:])[0]
        text_ids = torch.tensor([start.input_ids + [bos_text, start.first_token]], device=self.device)
        mask = torch.ones_like(text_ids)
        grids = {k: torch.from_numpy(np.asarray(val)).to(self.device) for k, val in start.grids.items()}
        positions, v.rope_delta = model.get_rope_index(
            text_ids, grids.get("image_grid_thw"), grids.get("video_grid_thw"), mask, start.use_audio_in_video,
            grids.get("audio_feature_lengths"), grids.get("video_second_per_grid"))
        v.seen = [self.codec["mask"]] * len(start.input_ids) + [self.codec["pad"], self.codec["bos"]]
        self.slots.take(v)
        out = model.model(inputs_embeds=model.thinker_to_talker_proj(embeds), position_ids=positions,
                          attention_mask=mask, past_key_values=self.slots.cache([v.row], [0]), use_cache=True,
                          return_dict=True)
        return self._choose(v, model.codec_head(out.last_hidden_state[:, -1:, :])[:, -1, :].float())

    def _decode(self, batch: list[_Voice]) -> list[OmniOutput]:
        torch, model = self.torch, self.model
        batch = sorted(batch, key=lambda v: v.row)  # rows 0..n-1: the cache's first rows, a view
        cache, mask = self._batch_cache(batch)
        codes = torch.tensor([[v.codes[-1]] for v in batch], device=self.device)
        states = torch.from_numpy(np.stack([self._reply_state(v) for v in batch])).to(self.device, model.dtype)
        embeds = model.get_input_embeddings()(codes) + states[:, None, :]
        past = torch.tensor([[len(v.seen) - 1] for v in batch], device=self.device)
        positions = (past + torch.cat([v.rope_delta for v in batch])).view(1, len(batch), 1).expand(3, -1, -1)
        out = model.model(inputs_embeds=model.thinker_to_talker_proj(embeds), position_ids=positions,
                          attention_mask=mask, past_key_values=cache, use_cache=True, return_dict=True)
        logits = model.codec_head(out.last_hidden_state[:, -1:, :])[:, -1, :].float()
        return [self._choose(v, logits[row:row + 1]) for row, v in enumerate(batch)]

    def _batch_cache(self, batch: list[_Voice]):
        """A decode pass's cache over the voices' rows, and its attention mask."""
        lengths = [self._cached(v) for v in batch]
        return self.slots.cache([v.row for v in batch], lengths), self.slots.mask(lengths, self.device)

    def _choose(self, v: _Voice, logits) -> OmniOutput:
        """The next codec token, or the end of this voice."""
        v.steps += 1
        code = v.sampler(logits, self.torch.tensor([v.seen], device=self.device), v.codes)
        if code in (self.codec["eos"], self.codec["pad"]) or len(v.codes) + 1 >= v.max_tokens:
            if code not in (self.codec["eos"], self.codec["pad"]):
                v.codes.append(code)
                return self._finish(v, [code])
            return self._finish(v)
        v.codes.append(code)
        v.seen.append(code)
        text, v.text = v.text, ""
        return OmniOutput(v.request_id, token_ids=[code], text=text)

    def _reply_state(self, v: _Voice) -> np.ndarray:
        """The thinker's state for this step: answer token `steps`, then text-end, then text-pad forever."""
        if v.steps < len(v.reply):
            return v.reply[v.steps]
        special = v.start.special_embeds
        return special[self.text_ids["eos"] if v.steps == len(v.reply) else self.text_ids["pad"]]

    def _finish(self, v: _Voice, codes: list[int] | None = None) -> OmniOutput:
        self._voices.pop(v.request_id, None)
        return OmniOutput(v.request_id, token_ids=codes or [], text=v.text, finish_reason="stop", done=True,
                          completion_tokens=len(v.codes))
