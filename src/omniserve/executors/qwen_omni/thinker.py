"""The thinker of a Qwen-Omni checkpoint: the model's own processor reads the chat and its media (images,
audio, video and a video's sound track), its encoders and language model write the answer.

Every step advances each running sequence by one token, so requests never wait for each other. When
a request is also spoken (the talker is on its route), each output carries what the talker starts
from (`OmniOutput.payload`), exactly what transformers' `generate(return_audio=True)` hands its talker:
after the prompt, what the talker takes from each prompt position, then per decode step what it takes
from the token just fed (`_talker_states`).

A request with a `prompt` and audio as its only output is speech (`/v1/audio/speech`): the text is
read aloud, as the thinker's forced answer, in one forward pass.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniserve.errors import InvalidRequest
from omniserve.executors.base import Executor, StepResult
from omniserve.executors.qwen_omni.runtime import (
    LoadedPart,
    OmniStageArgs,
    Sampler,
    check_sampling,
    failure,
    read_speakers,
)
from omniserve.executors.text_stream import TextStream
from omniserve.models.qwen_omni import QWEN_SYSTEM_PROMPT
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, OmniRequest, SamplingParams

ThinkerArgs = OmniStageArgs


@dataclass
class TalkerStart:
    """What the talker starts from (sent once, after the prompt): per prompt position, what the talker
    takes from it (`_talker_states`); the prompt's ids and media layout (for the talker's positions); and
    the thinker's embeddings of the talker's special text tokens."""

    prompt: np.ndarray  # (prompt length, hidden)
    input_ids: list[int]
    grids: dict[str, Any]  # image_grid_thw, video_grid_thw, audio_feature_lengths, video_second_per_grid
    use_audio_in_video: bool
    special_embeds: dict[int, np.ndarray]
    first_token: int


@dataclass
class ReplyStates:
    """What the talker takes from each answer token fed to the thinker, in order; `final`: no more come."""

    states: list[np.ndarray]
    final: bool = False


@dataclass
class _Sequence:
    request_id: str
    inputs: dict[str, Any]  # the processor's tensors
    sampler: Sampler
    params: SamplingParams
    text: TextStream
    speaks: bool
    forced: list[int] | None = None  # read aloud: the answer is these tokens
    use_audio_in_video: bool = False
    row: int = -1  # its row of the attention cache (`slots.py`), while it runs
    rope_delta: Any = None
    ids: list[int] = field(default_factory=list)  # prompt + answer so far
    prompt_len: int = 0
    generated: list[int] = field(default_factory=list)
    decoded: str = ""  # the answer's text so far (special tokens skipped)
    max_tokens: int = 0


class QwenOmniThinkerExecutor(Executor):
    def __init__(self, args: ThinkerArgs, stage: str = "thinker"):
        super().__init__(args, stage)
        self._waiting: deque[_Sequence] = deque()  # not prefilled yet
        self._running: dict[str, _Sequence] = {}

    # ---- load ----------------------------------------------------------------------

    def load(self) -> StageFacts:
        import torch
        import transformers
        from transformers import GenerationConfig

        from omniserve.executors.qwen_omni.slots import SlotKV

        self.torch = torch
        part = LoadedPart(self.args, "thinker")
        self.part, self.model, self.device, self.family = part, part.model, part.device, part.family
        folder = part.checkpoint.path
        self.processor = getattr(transformers, self.family.processor_class).from_pretrained(folder)
        self.tokenizer = self.processor.tokenizer
        thinker = part.config.thinker_config
        text = thinker.text_config
        self.slots = SlotKV(text.num_hidden_layers)
        self.context = min(self.args.context_length or text.max_position_embeddings, text.max_position_embeddings)
        try:
            eos = GenerationConfig.from_pretrained(folder).eos_token_id
        except OSError:
            eos = None
        eos = eos if eos is not None else text.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        # Qwen2.5-Omni names them `*_token_index`, Qwen3-Omni `*_token_id`
        self.media_tokens = [getattr(thinker, f"{kind}_token_index", None) or getattr(thinker, f"{kind}_token_id")
                             for kind in ("audio", "image", "video")]
        special: set[int] = set()
        self.accept_layer = None  # Qwen3-Omni's talker hears this thinker layer at media positions
        if part.config.enable_audio_output:
            special = talker_text_tokens(part.config, self.family.name, folder)
            if self.family.name == "qwen3_omni_moe":
                self.accept_layer = part.config.talker_config.accept_hidden_layer
        with torch.no_grad():
            table = self.model.get_input_embeddings()
            self.special_embeds = {i: table(torch.tensor([i], device=self.device))[0].float().cpu().numpy()
                                   for i in sorted(special)}
        return part.facts(context_length=self.context, native_media=["audio", "image", "video"], template_tools=False)

    def close(self) -> None:
        self._waiting.clear()
        self._running.clear()
        if hasattr(self, "slots"):
            self.slots.clear()

    # ---- requests ------------------------------------------------------------------

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request.sampling_for(self.stage)
        check_sampling(self.stage, params)
        speaks = "audio" in request.output_modalities
        read_aloud = request.messages is None and isinstance(request.prompt, str) and \
            request.output_modalities == ["audio"]
        forced = None
        if read_aloud:
            messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
            forced = self.tokenizer.encode(request.prompt, add_special_tokens=False) + [min(self.eos)]
        elif request.messages is not None:
            messages = request.messages
        else:
            raise InvalidRequest("prompt: this model answers chats; use /v1/chat/completions", param="prompt")
        inputs, use_audio_in_video = self._inputs(messages, request)
        prompt_len = int(inputs["input_ids"].shape[1])
        room = self.context - prompt_len - (len(forced) if forced else 0)
        if room < 1:
            where = "input" if read_aloud else "messages"
            raise InvalidRequest(f"the {'text' if read_aloud else 'prompt'} is {prompt_len + len(forced or [])} "
                                 f"tokens and this model's context is {self.context}; shorten the {where}",
                                 param=where)
        max_tokens = min(params.max_tokens or room, room)
        sequence = _Sequence(request.request_id, inputs, Sampler(params, self.device), params,
                             TextStream(params.stop), speaks, forced, use_audio_in_video, prompt_len=prompt_len,
                             max_tokens=max_tokens)
        self._waiting.append(sequence)
        return [OmniOutput(request.request_id, started=True, prompt_tokens=prompt_len)]

    def _inputs(self, messages: list[dict[str, Any]], request: OmniRequest) -> tuple[dict[str, Any], bool]:
        """The processor's tensors for a chat whose media parts point into the request's decoded media."""
        conversation, audios, images, videos, audio_sources, fps = [], [], [], [], [], []
        video_sound = []
        for message in messages:
            role = "system" if message["role"] == "developer" else message["role"]
            content = message.get("content")
            if not isinstance(content, list):
                conversation.append({"role": role, "content": [{"type": "text", "text": content or ""}]})
                continue
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "audio":
                    parts.append({"type": "audio"})
                    audios.append(request.audios[part["audio_index"]])
                    audio_sources.append(None)
                elif kind == "image":
                    parts.append({"type": "image"})
                    images.append(request.images[part["image_index"]])
                elif kind == "video":
                    parts.append({"type": "video"})
                    frames = [request.images[i] for i in part["frames"]]
                    if len(frames) % 2:  # the encoder takes frames in pairs
                        frames.append(frames[-1])
                    videos.append(np.stack(frames))
                    times = part["timestamps"]
                    fps.append(float((len(times) - 1) / (times[-1] - times[0])) if len(times) > 1 else 1.0)
                    video_sound.append(part["audio_index"] is not None)
                    if part["audio_index"] is not None:
                        audios.append(request.audios[part["audio_index"]])
                        audio_sources.append(len(videos) - 1)
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            conversation.append({"role": role, "content": parts})
        if conversation and conversation[0]["role"] != "system" and self.family.name == "qwen2_5_omni":
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM_PROMPT}]})
        use_audio_in_video = any(video_sound)
        if use_audio_in_video and not all(video_sound):
            raise InvalidRequest("videos: either every video keeps its sound (use_audio_in_video) or none does; "
                                 "this request mixes them", param="use_audio_in_video")
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if videos:
            kwargs["videos_kwargs"] = {"fps": fps[0] if len(set(fps)) == 1 else fps}
            if use_audio_in_video:
                kwargs["use_audio_in_video"] = True
                kwargs["audio_from_video_indices"] = audio_sources
        try:
            inputs = self.processor(text=[text], images=images or None, audio=audios or None,
                                    videos=videos or None, **kwargs)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise InvalidRequest(f"messages: the model's processor could not read this request's media ({exc})",
                                 param="messages") from None
        dtype = self.part.dtype
        tensors = {}
        for key, value in inputs.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(dtype)
            tensors[key] = value
        return tensors, use_audio_in_video

    def abort(self, request_id: str) -> None:
        self._waiting = deque(s for s in self._waiting if s.request_id != request_id)
        self._running.pop(request_id, None)
        self._free_rows()

    def _free_rows(self) -> None:
        """The rows of the sequences that stopped go to the running ones (between steps: then a row holds all of
        its sequence but the token it decodes next)."""
        self.slots.keep(lambda s: self._running.get(s.request_id) is s, lambda s: len(s.ids) - 1)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    # ---- steps ---------------------------------------------------------------------

    def step(self) -> StepResult:
        """Prefill the oldest waiting request, then one token for every running one, in one batch."""
        outputs: list[OmniOutput] = []
        with self.torch.no_grad():
            if self._waiting:
                sequence = self._waiting.popleft()
                try:
                    outputs += self._prefill(sequence)
                except Exception as exc:  # this prompt's alone (too big for the device, say)
                    self._running.pop(sequence.request_id, None)
                    self.fail(sequence.request_id, failure(exc))
            running = list(self._running.values())
            if running:
                try:
                    outputs += self._decode(running)
                except Exception as exc:  # the batch's: each of its requests fails, the stage goes on
                    for sequence in running:
                        self._running.pop(sequence.request_id, None)
                        self.fail(sequence.request_id, failure(exc))
            self._free_rows()
        return self.result(outputs, max(1, len(running)))

    def _prefill(self, s: _Sequence) -> list[OmniOutput]:
        torch = self.torch
        from transformers import DynamicCache

        inputs, s.inputs = s.inputs, None  # the media's tensors live no longer than this prompt pass
        media = inputs
        input_ids = inputs["input_ids"]
        audio_lengths = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
        rope, s.rope_delta = self.model.get_rope_index(
            input_ids, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), inputs["attention_mask"],
            s.use_audio_in_video, audio_lengths, inputs.get("video_second_per_grid"))
        forced = torch.tensor([s.forced], device=self.device) if s.forced else None
        if forced is not None:  # read aloud: the answer's positions continue the prompt's
            extra = torch.arange(forced.shape[1], device=self.device) + input_ids.shape[1]
            rope = torch.cat([rope, (extra + s.rope_delta).view(1, 1, -1).expand(3, 1, -1)], dim=-1)
            inputs = {**inputs, "input_ids": torch.cat([input_ids, forced], dim=1),
                      "attention_mask": torch.ones(1, input_ids.shape[1] + forced.shape[1], dtype=torch.long,
                                                   device=self.device)}
        length = inputs["input_ids"].shape[1]
        positions = torch.cat([torch.arange(length, device=self.device).view(1, 1, -1), rope], dim=0)
        if forced is None:
            self.slots.take(s)
        cache = DynamicCache(config=self.model.config.get_text_config()) if forced is not None \
            else self.slots.cache([s.row], [0])
        out = self.model(**inputs, position_ids=positions, use_cache=forced is None, past_key_values=cache,
                         use_audio_in_video=s.use_audio_in_video, output_hidden_states=s.speaks)
        s.ids = input_ids[0].tolist()
        first = OmniOutput(s.request_id)
        if forced is not None:
            s.generated = list(s.forced)
            s.ids += s.generated
            first.text = s.text.push(self._answer_text(s).encode()) + s.text.flush()
            first.completion_tokens = len(s.generated)
            first.finish_reason, first.done = "stop", True
            if s.speaks:
                summed = self._talker_states(out, inputs["input_ids"])[0]
                states = [summed[s.prompt_len + i] for i in range(len(s.forced) - 1)]
                first.payload = [self._talker_start(s, media, summed[:s.prompt_len], s.forced[0]),
                                 ReplyStates(states, final=True)]
            return [first]
        token = s.sampler(out.logits[:, -1, :].float(), input_ids, s.generated)
        if s.speaks:
            first.payload = [self._talker_start(s, media, self._talker_states(out, input_ids)[0], token)]
        self._running[s.request_id] = s
        return [self._advance(s, token, first)]

    def _decode(self, batch: list[_Sequence]) -> list[OmniOutput]:
        """One token for each running sequence, in one forward pass."""
        torch = self.torch
        batch = sorted(batch, key=lambda s: s.row)  # rows 0..n-1: the cache's first rows, a view
        lengths = [len(s.ids) - 1 for s in batch]
        cache, mask = self.slots.cache([s.row for s in batch], lengths), self.slots.mask(lengths, self.device)
        last = torch.tensor([[s.generated[-1]] for s in batch], device=self.device)
        past = torch.tensor([[len(s.ids) - 1] for s in batch], device=self.device)
        positions = (past + torch.cat([s.rope_delta for s in batch])).view(1, len(batch), 1)
        speaks = any(s.speaks for s in batch)
        out = self.model(input_ids=last, position_ids=positions, past_key_values=cache, use_cache=True,
                         attention_mask=mask, output_hidden_states=speaks)
        states = self._talker_states(out, last) if speaks else None
        outputs = []
        for row, s in enumerate(batch):
            seen = torch.tensor([s.ids], device=self.device)
            token = s.sampler(out.logits[row:row + 1, -1, :].float(), seen, s.generated)
            result = OmniOutput(s.request_id)
            if s.speaks:
                result.payload = [ReplyStates([states[row][0]])]
            outputs.append(self._advance(s, token, result))
        return outputs

    def _advance(self, s: _Sequence, token: int, out: OmniOutput) -> OmniOutput:
        """Take the chosen token: text delta, and the end of the answer if it ends here."""
        s.generated.append(token)
        s.ids.append(token)
        eos = token in self.eos and not s.params.ignore_eos
        if not eos:
            before = s.decoded
            s.decoded = self._answer_text(s)
            if s.decoded.endswith("\ufffd"):  # half a character: wait for the rest
                s.decoded = before
            else:
                out.text = s.text.push(s.decoded[len(before):].encode())
        finish = "stop" if eos or s.text.stopped else ("length" if len(s.generated) >= s.max_tokens else None)
        if finish:
            if not s.text.stopped:
                rest = self._answer_text(s)
                out.text += s.text.push(rest[len(s.decoded):].encode()) + s.text.flush()
            out.finish_reason, out.done = finish, True
            out.completion_tokens = len(s.generated)
            if s.speaks:
                out.payload = (out.payload or []) + [ReplyStates([], final=True)]
            self._running.pop(s.request_id, None)
        return out

    def _answer_text(self, s: _Sequence) -> str:
        return self.tokenizer.decode(s.generated, skip_special_tokens=True)

    def _talker_states(self, out, input_ids) -> np.ndarray:
        """Per position fed, what the talker takes from it. Qwen2.5-Omni: the last hidden state plus the
        token embedding (zero at media positions). Qwen3-Omni: the token embedding, or at media positions
        the hidden state of the layer its talker hears."""
        torch = self.torch
        embeds = self.model.get_input_embeddings()(input_ids)
        media = torch.isin(input_ids, torch.tensor(self.media_tokens, device=self.device)).unsqueeze(-1)
        if self.accept_layer is None:
            states = out.hidden_states[-1] + embeds.masked_fill(media, 0)
        else:
            states = torch.where(media, out.hidden_states[self.accept_layer], embeds)
        return states.float().cpu().numpy()

    def _talker_start(self, s: _Sequence, inputs: dict[str, Any], prompt: np.ndarray,
                      first_token: int) -> TalkerStart:
        grids = {}
        for key in ("image_grid_thw", "video_grid_thw", "video_second_per_grid"):
            if key in inputs:
                grids[key] = inputs[key].cpu().numpy()
        if "feature_attention_mask" in inputs:
            grids["audio_feature_lengths"] = inputs["feature_attention_mask"].sum(-1).cpu().numpy()
        return TalkerStart(prompt, inputs["input_ids"][0, :s.prompt_len].tolist(), grids, s.use_audio_in_video,
                           self.special_embeds, first_token)


def talker_text_tokens(config, family: str, folder) -> set[int]:
    """The thinker-vocabulary tokens whose embeddings the talker uses: text start, end and pad (and for
    Qwen2.5-Omni each speaker's text-start token)."""
    if family == "qwen3_omni_moe":
        return {config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id}
    talker = config.talker_config
    return {talker.tts_text_end_token_id, talker.tts_text_pad_token_id, talker.tts_text_start_token_id} | \
        {s["bos_token"] for s in read_speakers(folder).values()}
