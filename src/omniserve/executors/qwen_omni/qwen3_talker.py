"""The talker of a Qwen3-Omni checkpoint, with its code predictor: one codec frame (a first code and
`num_code_groups - 1` residual codes) per step, from the thinker's states as they arrive.

Its prompt is laid out as transformers' `generate(return_audio=True)` lays it out: the user turns
(token embeddings through `text_projection`, media positions' thinker states through
`hidden_projection`), then the assistant turn's first tokens added to the codec's start tokens and the
chosen speaker. Each step after that takes the next answer token's embedding (then text-end, then
text-pad) plus the embeddings of the last frame's codes. The code predictor draws each frame's residual
codes right after its first code, from the same random stream, as transformers does; every running
request's predictor runs in one batch (their caches are always the same length).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from omniserve.executors.qwen_omni.runtime import LoadedPart, OmniStageArgs, Sampler
from omniserve.executors.qwen_omni.talker import QwenOmniTalkerExecutor, VoiceParams, _Voice
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, SamplingParams

TalkerArgs = OmniStageArgs
# what transformers' Qwen3-Omni talker passes its code predictor when it samples
PREDICTOR_SAMPLING = SamplingParams(temperature=1.0, top_k=50, top_p=0.8)
ASSISTANT_LEAD = 3  # <|im_start|>assistant\n: the assistant tokens laid out before the first answer token


@dataclass
class _Voice3(_Voice):
    predictor: Sampler | None = None  # draws the residual codes
    head: int = -1  # assistant-turn tokens already in the prompt (answer token i is assistant row head + i)
    frame: list[int] = field(default_factory=list)  # the last frame's codes
    length: int = 0  # positions in the talker's cache


class Qwen3OmniTalkerExecutor(QwenOmniTalkerExecutor):
    SAMPLING = {"temperature": 0.9, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.05}

    def load(self) -> StageFacts:
        import torch

        self.torch = torch
        part = LoadedPart(self.args, "talker")
        self.part, self.model, self.device = part, part.model, part.device
        self._slots()
        config, talker = part.config, part.config.talker_config
        if getattr(self.model.config, "audio_config", None) is None:
            # transformers' talker lays out audio positions with the audio encoder's window, which only the
            # thinker's config holds (its own generate fails on audio input without this)
            self.model.config.audio_config = config.thinker_config.audio_config
        speakers = {name.capitalize(): token for name, token in (talker.speaker_id or {}).items()}
        if not speakers:
            raise ValueError(f"{part.checkpoint.path}: the talker config names no speakers (speaker_id)")
        # transformers' default speaker first: the one a request that names none gets
        self.speakers = dict(sorted(speakers.items(), key=lambda item: item[0] != part.family.default_voice))
        self.default_voice = next(iter(self.speakers))
        vocab = talker.text_config.vocab_size
        self.codec = {"bos": talker.codec_bos_id, "eos": talker.codec_eos_token_id, "pad": talker.codec_pad_id,
                      "nothink": talker.codec_nothink_id, "think_bos": talker.codec_think_bos_id,
                      "think_eos": talker.codec_think_eos_id}
        # the top 1024 ids are the codec's specials: never drawn, but the end
        self.suppressed = [i for i in range(max(0, vocab - 1024), vocab) if i != self.codec["eos"]]
        self.text_ids = {"bos": config.tts_bos_token_id, "eos": config.tts_eos_token_id,
                         "pad": config.tts_pad_token_id, "im_start": config.im_start_token_id,
                         "user": config.user_token_id, "assistant": config.assistant_token_id}
        thinker = config.thinker_config
        self.media_tokens = [thinker.audio_token_id, thinker.image_token_id, thinker.video_token_id]
        self.groups = talker.num_code_groups
        return part.facts(voices=list(self.speakers), sample_rate=part.family.sample_rate, code_groups=self.groups)

    def _voice(self, request_id: str, speaker: str, params: VoiceParams) -> _Voice3:
        sampling = self._sampling(params)
        stops = [self.codec["eos"]] if params.ignore_eos else []
        sampler = Sampler(sampling, self.device, suppress=self.suppressed + stops)
        # the residual codes are drawn greedily when the first ones are, and from the same random stream
        predictor = replace(PREDICTOR_SAMPLING, temperature=0.0) if sampling.temperature == 0 else PREDICTOR_SAMPLING
        return _Voice3(request_id, speaker, sampler, params.max_tokens,
                       predictor=Sampler(predictor, self.device, generator=sampler.generator))

    # ---- what the talker reads ----------------------------------------------------------

    def _ready(self, voice: _Voice3) -> bool:
        if voice.start is None:
            return False
        if voice.steps == 0:  # the prompt ends with the first answer token
            return len(voice.reply) > ASSISTANT_LEAD - self._head(voice)
        return voice.reply_final or len(voice.reply) > ASSISTANT_LEAD + voice.steps - self._head(voice)

    def _head(self, v: _Voice3) -> int:
        """Where the prompt's last assistant turn (the one being answered) starts, counted from its end."""
        if v.head < 0:
            ids = v.start.input_ids
            starts = [p for p in range(len(ids) - 1)
                      if ids[p] == self.text_ids["im_start"] and ids[p + 1] == self.text_ids["assistant"]]
            v.head = len(ids) - starts[-1] if starts else 0
        return v.head

    def _assistant_row(self, v: _Voice3, index: int) -> np.ndarray:
        """Row `index` of the assistant turn: its prompt tokens, then the answer; past the answer the
        text-end token, then text-pad."""
        prompt, head = v.start.prompt, self._head(v)
        if index < head:
            return prompt[len(prompt) - head + index]
        if index - head < len(v.reply):
            return v.reply[index - head]
        special = v.start.special_embeds
        return special[self.text_ids["eos"] if index - head == len(v.reply) else self.text_ids["pad"]]

    def _cached(self, v: _Voice3) -> int:
        return v.length

    def _text(self, rows: list[np.ndarray]):
        """The talker's projection of thinker token embeddings."""
        batch = self.torch.from_numpy(np.stack(rows)).to(self.device, self.model.dtype)
        return self.model.text_projection(batch)

    # ---- steps ----------------------------------------------------------------------------

    def _prefill(self, v: _Voice3) -> OmniOutput:
        torch, model = self.torch, self.model
        start = v.start
        ids = np.asarray(start.input_ids)
        # the user turns: a position belongs to the turn its last <|im_start|> opened
        positions = np.arange(len(ids))
        opened = np.maximum.accumulate(np.where(ids == self.text_ids["im_start"], positions, -1)).clip(0)
        user = ids[np.minimum(opened + 1, len(ids) - 1)] == self.text_ids["user"]
        media = np.isin(ids, self.media_tokens)
        prompt = torch.from_numpy(start.prompt).to(self.device, model.dtype)
        users = torch.empty(int(user.sum()), model.config.text_config.hidden_size, device=self.device,
                            dtype=model.dtype)
        picked = torch.from_numpy(media[user]).to(self.device)
        rows = prompt[torch.from_numpy(user).to(self.device)]
        if picked.any():
            users[picked] = model.hidden_projection(rows[picked])
        if (~picked).any():
            users[~picked] = model.text_projection(rows[~picked])
        # the assistant turn: its first tokens, four pads and text-start over the codec's start tokens and
        # the speaker, then the first answer token over codec-bos
        special = start.special_embeds
        lead = [self._assistant_row(v, i) for i in range(ASSISTANT_LEAD)]
        pad, bos = special[self.text_ids["pad"]], special[self.text_ids["bos"]]
        text = self._text(lead + [pad] * 4 + [bos, self._assistant_row(v, ASSISTANT_LEAD)])
        codec = torch.tensor([self.codec["nothink"], self.codec["think_bos"], self.codec["think_eos"],
                              self.speakers[v.speaker], self.codec["pad"], self.codec["bos"]], device=self.device)
        text[ASSISTANT_LEAD:] += model.get_input_embeddings()(codec)
        embeds = torch.cat([users, text])[None]
        talker_ids = torch.tensor([ids[user].tolist() + [self.text_ids["pad"]] * len(text)], device=self.device)
        mask = torch.ones_like(talker_ids)
        grids = {k: torch.from_numpy(np.asarray(val)).to(self.device) for k, val in start.grids.items()}
        if "audio_feature_lengths" in grids or any(grids.get(k) is not None and grids[k].numel() > 0
                                                   for k in ("image_grid_thw", "video_grid_thw")):
            positions, v.rope_delta = model.get_rope_index(
                talker_ids, grids.get("image_grid_thw"), grids.get("video_grid_thw"), mask, start.use_audio_in_video,
                grids.get("audio_feature_lengths"), grids.get("video_second_per_grid"))
        else:
            positions = torch.arange(talker_ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
            v.rope_delta = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        v.seen = []  # transformers' talker starts from embeddings: its repetition penalty sees only its codes
        v.length = talker_ids.shape[1]
        self.slots.take(v)
        out = model.model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                          past_key_values=self.slots.cache([v.row], [0]), use_cache=True)
        return self._frames([v], out.last_hidden_state[:, -1])[0]

    def _decode(self, batch: list[_Voice3]) -> list[OmniOutput]:
        """One frame for each voice: its last frame's codes and its next text row in, one forward pass."""
        torch, model = self.torch, self.model
        batch = sorted(batch, key=lambda v: v.row)  # rows 0..n-1: the cache's first rows, a view
        cache, mask = self._batch_cache(batch)
        frames = torch.tensor([v.frame for v in batch], device=self.device)
        embeds = model.get_input_embeddings()(frames[:, :1])[:, 0]
        for group, table in enumerate(model.code_predictor.get_input_embeddings()):
            embeds = embeds + table(frames[:, group + 1])
        embeds = embeds + self._text([self._assistant_row(v, ASSISTANT_LEAD + v.steps) for v in batch])
        past = torch.tensor([[v.length] for v in batch], device=self.device)
        positions = (past + torch.cat([v.rope_delta for v in batch])).view(1, len(batch), 1).expand(3, -1, -1)
        out = model.model(inputs_embeds=embeds[:, None], position_ids=positions, attention_mask=mask,
                          past_key_values=cache, use_cache=True)
        for v in batch:
            v.length += 1
        return self._frames(batch, out.last_hidden_state[:, -1])

    def _frames(self, batch: list[_Voice3], hidden) -> list[OmniOutput]:
        """Each voice's next first code from the talker's last hidden state (or its end), then the residual
        codes of every voice that goes on, from the code predictor in one batch."""
        torch, model = self.torch, self.model
        logits = model.codec_head(hidden).float()
        outputs: dict[str, OmniOutput] = {}
        going, firsts = [], []
        for row, v in enumerate(batch):
            v.steps += 1
            code = v.sampler(logits[row:row + 1], torch.tensor([v.seen], device=self.device, dtype=torch.long),
                             v.codes)
            if code == self.codec["eos"]:
                outputs[v.request_id] = self._finish(v)
            else:
                going.append(row)
                firsts.append(code)
        if going:
            codes = self._residuals([batch[r] for r in going], hidden[going], firsts)
            for row, first, rest in zip(going, firsts, codes, strict=True):
                v = batch[row]
                v.frame = [first, *rest]
                v.codes.append(first)
                v.seen.append(first)
                if len(v.codes) >= v.max_tokens:
                    outputs[v.request_id] = self._finish(v, v.frame)
                else:
                    text, v.text = v.text, ""
                    outputs[v.request_id] = OmniOutput(v.request_id, token_ids=list(v.frame), text=text)
        return [outputs[v.request_id] for v in batch]

    def _residuals(self, batch: list[_Voice3], hidden, firsts: list[int]) -> list[list[int]]:
        """The code predictor: from the talker's hidden state and the first code, one residual code per
        remaining group, each drawn by its request's own sampler."""
        torch = self.torch
        from transformers import DynamicCache

        predictor = self.model.code_predictor
        first = self.model.get_input_embeddings()(torch.tensor(firsts, device=self.device))
        embeds = torch.stack([hidden, first], dim=1)
        cache = DynamicCache(config=predictor.config)
        none = torch.zeros(1, 0, dtype=torch.long, device=self.device)
        codes: list[list[int]] = [[] for _ in batch]
        for group in range(self.groups - 1):
            out = predictor.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
            logits = predictor.lm_head[group](out.last_hidden_state[:, -1]).float()
            for row, v in enumerate(batch):
                codes[row].append(v.predictor(logits[row:row + 1], none, codes[row]))
            if group < self.groups - 2:
                latest = torch.tensor([c[-1] for c in codes], device=self.device)
                embeds = predictor.get_input_embeddings()[group](latest)[:, None]
        return codes
