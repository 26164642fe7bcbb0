"""One realtime response: the conversation as a chat request through the same pipeline as
`/v1/chat/completions` (thinker ⇢ talker), and its outputs as Realtime API events.

Audio goes out as the talker speaks each sentence, with that sentence as the transcript delta, so an
answer's first audio follows its first sentence. With tools, the answer is text first (it may be a
call, which must not be spoken), then read aloud if it is not a call. A cancelled response (the client
asked, or the user spoke over it) closes what it had open and ends `cancelled`; its pipeline request is
aborted."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from omniserve.api.protocol.chat import AudioOutput, ChatCompletionRequest
from omniserve.api.protocol.common import validate_fields
from omniserve.api.protocol.tools import malformed_call, parse_calls
from omniserve.api.realtime.ahead import AnswerAhead
from omniserve.api.realtime.conversation import Conversation, SpokenTrack, new_id
from omniserve.api.realtime.events import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    AudioDoneEvent,
    ContentPart,
    ContentPartEvent,
    DeltaEvent,
    Item,
    ItemDeletedEvent,
    ItemEvent,
    OutputItemEvent,
    ResponseEvent,
    ResponseOut,
    ResponseUsage,
    ServerEvent,
    TextDoneEvent,
    TokenDetails,
    TranscriptDoneEvent,
)
from omniserve.api.realtime.limits import REALTIME
from omniserve.api.realtime.settings import ResponseOptions
from omniserve.api.realtime.truncation import ContextFit
from omniserve.api.routes.chat import chat_omni_request, hears_itself
from omniserve.api.routes.common import stage_params, takes
from omniserve.api.speakers import Speakers
from omniserve.calls import CallFilter
from omniserve.errors import InvalidRequest, OmniError
from omniserve.media.pcm import PcmWriter
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import OmniOutput, OmniRequest


class RealtimeResponse:
    def __init__(self, conn: HTTPConnection, client: Client, chat: ServedModel, talker: ServedModel | None,
                 conversation: Conversation, options: ResponseOptions, emit: Callable[[ServerEvent], None],
                 ahead: AnswerAhead | None = None):
        """`ahead`: this turn's answer, begun at the speaker's pause (taken if it is this response's request)."""
        self.id = new_id("resp")
        self.options = options
        self.cancel_reason: str | None = None  # set before the task is cancelled
        self._conn, self._client, self._chat, self._talker = conn, client, chat, talker
        self._conversation = conversation
        self._emit = emit
        self._out = ResponseOut(id=self.id, output_modalities=options.modalities,
                                max_output_tokens=options.max_output_tokens, metadata=options.metadata,
                                audio={"output": {"format": {"type": options.output_format.name,
                                                             "rate": options.output_format.rate},
                                                  "voice": options.voice}})
        self._usage = [0, 0, 0]  # prompt, completion and cached tokens of the thinker
        self._finish_reason: str | None = None
        self._open: tuple[Item, int] | None = None  # the output item being written, and its output index
        self._text = ""
        self._writer: PcmWriter | None = None
        self._track: SpokenTrack | None = None
        self._audio_started: float | None = None  # when its first audio went out
        self._ahead = ahead

    # ---- what the client has heard ---------------------------------------------------------------------

    @property
    def spoken_item(self) -> str | None:
        """The assistant item whose audio went out, if any."""
        return next((i.id for i in self._out.output if i.content and i.content[0].type == "output_audio"), None)

    def played_ms(self) -> int:
        """How much of its audio a client playing it as it arrived has played by now."""
        if self._audio_started is None or self._track is None:
            return 0
        return round(min(self._track.ms, (time.monotonic() - self._audio_started) * 1000))

    # ---- the run -----------------------------------------------------------------------------------

    async def run(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Answer once `ready` (the user's audio transcribed); end with `response.done`."""
        self._emit(ResponseEvent(type="response.created", response=self._out))
        try:
            await ready()
            await self._answer()
            length = self._finish_reason == "length"
            self._out.status = "incomplete" if length else "completed"
            if length:
                self._out.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            self._close("incomplete")
            self._out.status = "cancelled"
            self._out.status_details = {"type": "cancelled", "reason": self.cancel_reason or "client_cancelled"}
        except OmniError as exc:
            self._close("incomplete")
            self._out.status = "failed"
            self._out.status_details = {"type": "failed", "error": {"type": exc.error_type, "code": exc.code,
                                                                    "message": exc.message}}
        if self._ahead is not None:  # the response ended before it looked at it
            await self._ahead.drop()
        prompt, completion, cached = self._usage
        self._out.usage = ResponseUsage(
            total_tokens=prompt + completion, input_tokens=prompt, output_tokens=completion,
            input_token_details=TokenDetails(text_tokens=prompt, cached_tokens=cached),
            output_token_details=TokenDetails(text_tokens=completion))
        self._emit(ResponseEvent(type="response.done", response=self._out))

    async def _answer(self) -> None:
        o = self.options
        speak = "audio" in o.modalities
        items = await self._fitted(o.input if o.input is not None else self._conversation.items)
        plan = await plan_answer(self._conn, self._client, self._chat, self._talker, self._conversation, items, o,
                                 self.id)
        self._talker = plan.talker or self._talker  # the voice picks which talker speaks
        ahead, self._ahead = self._ahead, None
        stream = (await ahead.take(plan.key) if ahead else None) or self._client.generate(plan.omni)
        if plan.text_first:  # its talker would read a call aloud: the text first, then read aloud if it is no call
            text = "".join([out.text async for out in self._thinker(stream)])
            content, calls = self._calls(text, plan.body.tools)
            if content and not calls:
                await self._message(self._read_aloud(content) if speak else _said(content, self._chat.stage), speak)
            return
        tools = plan.body.tools if plan.body.calls_tools else []
        text = await self._message(stream, speak, unsaid_calls=bool(tools))
        calls = self._calls(text, tools)[1] if tools else []
        if not calls and not self._out.output:  # it said nothing: still an (empty) answer
            self._open_message(speak)
            self._close("completed")

    def _calls(self, text: str, tools: list) -> tuple[str | None, list[dict]]:
        """The calls in an answer's text, as function_call items. A call block that does not parse fails the
        response (closed: a call is never spoken, and nothing is run); one cut off by `max_output_tokens` is
        left out (the response is incomplete)."""
        content, calls = parse_calls(text, tools)
        if (bad := malformed_call(text, calls, cut_short=self._finish_reason == "length")) is not None:
            raise OmniError(f"the model wrote a tool call that is not a call of one of the tools (JSON with `name` "
                            f"and object `arguments`): {bad!r}", code="invalid_tool_call")
        for call in calls:
            self._function_call(call["id"], call["function"]["name"], call["function"]["arguments"])
        return content, calls

    async def _fitted(self, items: list[Item]) -> list[Item]:
        """The items the answer reads: past the context, the oldest are dropped from the conversation (the
        session's `truncation`), and the client is told."""
        drop = await fit_context(self._client, self._chat, self._conversation, items, self.options)
        kept, dropped = items[drop:], items[:drop]
        for item in dropped:
            self._conversation.delete(item.id)
            self._emit(ItemDeletedEvent(item_id=item.id))
        return kept

    async def _thinker(self, stream: AsyncIterator[OmniOutput]) -> AsyncIterator[OmniOutput]:
        """The thinker's outputs, counted."""
        try:
            async for out in stream:
                if out.stage == self._chat.stage:
                    self._count(out)
                    yield out
        finally:
            await stream.aclose()

    def _read_aloud(self, text: str) -> AsyncIterator[OmniOutput]:
        voices = Speakers.of(self._conn)
        talker = self._talker = voices.pick(self.options.voice, "voice")
        voice = voices.resolve(talker, self.options.voice, "voice")
        return self._client.generate(OmniRequest(new_id("speech"), prompt=text, entry=talker.entry, lane=REALTIME,
                                                 output_modalities=["audio"],
                                                 params=stage_params(self._client, talker, {"voice": voice})))

    def _count(self, out: OmniOutput) -> None:
        self._usage[0] = out.prompt_tokens or self._usage[0]
        if out.finish_reason:
            self._usage[1:] = [out.completion_tokens, out.cached_tokens]
            self._finish_reason = out.finish_reason

    # ---- an assistant message ----------------------------------------------------------------------------

    async def _message(self, stream: AsyncIterator[OmniOutput], speak: bool, unsaid_calls: bool = False) -> str:
        """One assistant message from the pipeline's outputs: the talker's audio and transcript, or the
        thinker's text; opened when it first says something. `unsaid_calls`: the text may hold tool calls,
        which are left out of it as it streams (a talker leaves them out of what it speaks). Returns the
        thinker's whole text."""
        written = CallFilter() if unsaid_calls and not speak else None
        thinker: list[str] = []
        try:
            async for out in stream:
                if speak and out.stage == self._talker.stage:
                    if out.audio or out.text:
                        self._open_message(speak)
                        self._speak(out)
                elif out.stage == self._chat.stage:
                    self._count(out)
                    thinker.append(out.text)
                    if not speak:
                        self._write(written.push(out.text) if written else out.text)
        finally:
            await stream.aclose()
        if speak and self._open is not None and (tail := self._writer.flush()):
            self._emit(DeltaEvent(type="response.output_audio.delta", delta=_b64(tail), **self._at()))
        self._close("completed")
        return "".join(thinker)

    def _open_message(self, speak: bool) -> None:
        """Start the assistant message (once)."""
        if self._open is not None:
            return
        kind = "output_audio" if speak else "output_text"
        item = Item(id=new_id("item"), type="message", role="assistant", status="in_progress", content=[])
        self._add_output(item)
        part = ContentPart(type=kind, transcript="") if speak else ContentPart(type=kind, text="")
        item.content.append(part)
        self._emit(ContentPartEvent(type="response.content_part.added", part=_shown(part), **self._at()))
        if speak:
            self._writer = PcmWriter(self.options.output_format, self._talker.facts.sample_rate)
            self._track = SpokenTrack()
            if self.options.in_conversation:  # what was said aloud, to cut the item back to what was heard
                self._conversation.spoken[item.id] = self._track

    def _write(self, text: str) -> None:
        if text:
            self._open_message(False)
            self._text += text
            self._emit(DeltaEvent(type="response.output_text.delta", delta=text, **self._at()))

    def _speak(self, out: OmniOutput) -> None:
        text = out.text
        if text and self._text and not self._text[-1].isspace() and not text[0].isspace():
            text = " " + text
        if text:
            self._text += text
            self._emit(DeltaEvent(type="response.output_audio_transcript.delta", delta=text, **self._at()))
        if data := self._writer.write(out.audio):
            if self._audio_started is None:
                self._audio_started = time.monotonic()
            self._emit(DeltaEvent(type="response.output_audio.delta", delta=_b64(data), **self._at()))
        if out.audio:
            self._track.add(len(out.audio) / 2 / self._talker.facts.sample_rate * 1000, text)

    def _close(self, status: str) -> None:
        """End the open message: its part's done events, then the item's."""
        if self._open is None:
            return
        item, _ = self._open
        part = item.content[0]
        if part.type == "output_audio":
            part.transcript = self._text
            self._emit(AudioDoneEvent(**self._at()))
            self._emit(TranscriptDoneEvent(transcript=self._text, **self._at()))
        else:
            part.text = self._text
            self._emit(TextDoneEvent(text=self._text, **self._at()))
        self._emit(ContentPartEvent(type="response.content_part.done", part=_shown(part), **self._at()))
        item.status = status
        self._done_output()

    def _at(self) -> dict[str, Any]:
        item, index = self._open
        return {"response_id": self.id, "item_id": item.id, "output_index": index, "content_index": 0}

    # ---- a function call -------------------------------------------------------------------------------

    def _function_call(self, call_id: str, name: str, arguments: str) -> None:
        item = Item(id=new_id("item"), type="function_call", status="in_progress", call_id=call_id, name=name,
                    arguments="")
        index = self._add_output(item)
        at = {"response_id": self.id, "item_id": item.id, "output_index": index, "call_id": call_id}
        self._emit(ArgumentsDeltaEvent(delta=arguments, **at))
        self._emit(ArgumentsDoneEvent(name=name, arguments=arguments, **at))
        item.arguments, item.status = arguments, "completed"
        self._done_output()

    # ---- output items ----------------------------------------------------------------------------------

    def _add_output(self, item: Item) -> int:
        index = len(self._out.output)
        self._out.output.append(item)
        self._open = (item, index)
        self._emit(OutputItemEvent(type="response.output_item.added", response_id=self.id, output_index=index,
                                   item=item))
        if self.options.in_conversation:
            previous = self._conversation.add(item)
            self._emit(ItemEvent(type="conversation.item.added", previous_item_id=previous, item=item))
        return index

    def _done_output(self) -> None:
        item, index = self._open
        self._emit(OutputItemEvent(type="response.output_item.done", response_id=self.id, output_index=index,
                                   item=item))
        if self.options.in_conversation:
            self._emit(ItemEvent(type="conversation.item.done", item=item))
        self._open, self._text = None, ""


@dataclass
class AnswerPlan:
    """A response's pipeline request, and how its outputs are read."""

    body: ChatCompletionRequest
    omni: OmniRequest
    talker: ServedModel | None
    text_first: bool  # it may call a tool, which its talker would speak: the text first, then read aloud

    @property
    def key(self) -> str:
        """What makes two plans the same request (an answer begun ahead is taken only by its own)."""
        return self.body.model_dump_json()


async def plan_answer(conn: HTTPConnection, client: Client, chat: ServedModel, talker: ServedModel | None,
                      conversation: Conversation, items: list[Item], options: ResponseOptions,
                      request_id: str) -> AnswerPlan:
    """The chat request that answers `items` with `options` (InvalidRequest: it cannot be answered)."""
    o = options
    speak = "audio" in o.modalities
    if speak and talker is None:
        raise InvalidRequest("this server has no text-to-speech stage (--tts-model none, or --text-only); set "
                             "output_modalities to [\"text\"]", param="output_modalities")
    messages = conversation.chat_messages(items, hears_itself(client, chat))
    if not messages:
        raise InvalidRequest("the conversation holds nothing to answer yet: add a user item, or speak",
                             param="conversation")
    if o.instructions:
        messages.insert(0, {"role": "system", "content": o.instructions})
    choice = o.tool_choice if isinstance(o.tool_choice, str) else {
        "type": "function", "function": {"name": o.tool_choice.name}}
    fields: dict[str, Any] = {
        "model": chat.id, "messages": messages, "temperature": o.temperature,
        "max_completion_tokens": None if o.max_output_tokens == "inf" else o.max_output_tokens,
        "tools": [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                  for t in o.tools] or None, "tool_choice": choice if o.tools else None,
        "stage_sampling": o.stage_sampling or None}
    body = validate_fields({k: v for k, v in fields.items() if v is not None}, ChatCompletionRequest)
    # a call is never spoken: a talker that leaves calls out of what it reads speaks as the text streams;
    # another one reads the text once it is known to be no call
    speaker = Speakers.of(conn).pick(o.voice, "voice") if speak else None
    text_first = body.calls_tools and speaker is not None and not takes(client, speaker, "unspoken_calls")
    if speak and not text_first:
        body.modalities, body.audio = ["text", "audio"], AudioOutput(voice=o.voice)
    omni, picked = await chat_omni_request(conn, client, body, chat, request_id)
    omni.lane = REALTIME
    return AnswerPlan(body, omni, picked, text_first)


async def fit_context(client: Client, chat: ServedModel, conversation: Conversation, items: list[Item],
                      options: ResponseOptions) -> int:
    """How many of the oldest `items` a response with `options` must leave out to fit the chat model."""
    o = options
    fit = ContextFit(client, chat, conversation, hears_itself(client, chat))
    return await fit.to_drop(items, o.instructions, o.tools, o.max_output_tokens, o.truncation)


def _shown(part: ContentPart) -> ContentPart:
    """A content part as `response.content_part.*` names it ("audio", "text")."""
    kind = "audio" if part.type == "output_audio" else "text"
    return part.model_copy(update={"type": kind})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _said(text: str, stage: str) -> AsyncIterator[OmniOutput]:
    """Text already in hand, as the thinker's one output."""
    yield OmniOutput("", stage=stage, text=text)
