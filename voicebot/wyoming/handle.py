"""The LLM as a Wyoming conversation agent (`handle`): a `transcript` in, the answer streamed out.

Each conversation (Home Assistant's conversation id, else the connection) keeps its own voicebot
Conversation, in a bounded LRU, and asks the LLM through the LLM service as a typed request: a voice turn
of a voice loop sharing the model goes first, and each conversation's KV cache is kept between turns.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import itertools
import logging
import re
import time
from dataclasses import dataclass, field

from wyoming.asr import Transcript
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Attribution, Describe, HandleModel, HandleProgram, Info

from voicebot.config import Config
from voicebot.errors import RequestTooLargeError, VoicebotError
from voicebot.llm import ChatModel, Conversation, Interrupted, PromptCost, Sampling, system_prompts
from voicebot.llm_service import LlmBusyError, LlmService, Priority
from voicebot.models.registry import entry_at
from voicebot.tts import language_of
from voicebot.wyoming.peer import BadRequest, Connection, EventServer, parsed, text_field

log = logging.getLogger(__name__)

MAX_CONVERSATIONS = 64
"""Conversations remembered; the one unused longest is forgotten first."""
MAX_TEXT_CHARS = 4000
"""One question; the LLM's context would not take much more anyway."""
MAX_CONVERSATION_ID_CHARS = 200


@dataclass(eq=False)
class _Remembered:
    """A conversation, its name in the logs and in the LLM service, and the lock that keeps its turns in order."""

    name: str
    llm_key: str
    """The conversation's name in the LLM service, whose KV caches it shares with the voice loop and HTTP."""
    conversation: Conversation
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    turns: int = 0


class Conversations:
    """Conversations by id, in an LRU of `size`: the one unused longest is forgotten first."""

    def __init__(self, config: Config, size: int = MAX_CONVERSATIONS) -> None:
        self.config = config
        self.size = size
        self._by_id: collections.OrderedDict[str, _Remembered] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, conversation_id: str) -> _Remembered:
        """The conversation with this id, a new one if it is not remembered."""
        remembered = self._by_id.pop(conversation_id, None)
        if remembered is None:
            remembered = new_conversation(self.config, conversation_id, f"wyoming:{conversation_id}")
        self._by_id[conversation_id] = remembered
        while len(self._by_id) > self.size:
            forgotten, _ = self._by_id.popitem(last=False)
            log.info("wyoming handle: forgot conversation %s (%d are kept)", forgotten, self.size)
        return remembered


def new_conversation(config: Config, name: str, llm_key: str) -> _Remembered:
    """A conversation with nothing said yet."""
    return _Remembered(name, llm_key, Conversation(config.conversation, system_prompts(config.llm)))


class HandleServer(EventServer):
    """The LLM service, the conversations, and their compression in the background."""

    name = "handle"

    def __init__(self, llm: LlmService, config: Config) -> None:
        super().__init__()
        self.llm = llm
        self.chat: ChatModel = llm.chat
        self.sampling = Sampling.from_config(config.llm)
        self.stall_s = config.llm.stall_timeout_s
        self.config = config
        self.conversations = Conversations(config)
        self.info = handle_info(llm.chat, config)
        self.info_event = self.info.event()
        self._connection_ids = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()

    def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HandleConnection:
        return HandleConnection(reader, writer, self, f"connection-{next(self._connection_ids)}")

    def compress_in_background(self, remembered: _Remembered) -> None:
        """Compress the conversation's old turns, if due, while nothing else wants the model."""
        compressed = self.llm.compress(remembered.llm_key, remembered.conversation, self.sampling, Priority.TYPED)
        task = asyncio.create_task(self._report_compression(remembered.name, compressed), name="wyoming-compress")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_compression(self, conversation_id: str, compressed: asyncio.Future) -> None:
        try:
            await compressed
        except Interrupted:
            log.debug("wyoming handle: compressing conversation %s gave way", conversation_id)
        except VoicebotError as error:
            log.warning("wyoming handle: compressing conversation %s failed: %s", conversation_id, error)

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def handle_info(chat: ChatModel, config: Config) -> Info:
    """What `describe` answers: the LLM loaded, its licence, and the languages voicebot has system prompts for."""
    metadata: dict[str, str] = chat._llama.metadata  # The GGUF's own header; ChatModel has no accessor for it.
    entry = entry_at(chat.model_path.name)
    licence = entry.licence if entry is not None else metadata.get("general.license", "licence unknown")
    maker = metadata.get("general.organization") or (entry.name.split("-", 1)[0] if entry is not None else "unknown")
    url = metadata.get("general.url") or metadata.get("general.repo_url") or ""
    model = HandleModel(
        name=chat.model_path.stem,
        attribution=Attribution(name=maker, url=url),
        installed=True,
        description=f"{entry.description if entry is not None else 'GGUF chat model'}; {licence}",
        version=None,
        languages=sorted(system_prompts(config.llm)),
    )
    return Info(
        handle=[
            HandleProgram(
                name="voicebot",
                attribution=Attribution(name="llama.cpp", url="https://github.com/ggml-org/llama.cpp"),
                installed=True,
                description="voicebot's local LLM through llama-cpp-python: short spoken answers, "
                "a conversation per conversation id",
                version=importlib.metadata.version("llama_cpp_python"),
                models=[model],
                supports_handled_streaming=True,
                supports_home_control=False,
            )
        ]
    )


class HandleConnection(Connection):
    """`transcript` in; `handled-start`, `handled-chunk`s as the answer is written, `handled`, `handled-stop` out."""

    server: HandleServer

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: HandleServer, connection_id: str
    ) -> None:
        super().__init__(reader, writer, server)
        self.connection_id = connection_id
        self._own: _Remembered | None = None
        """The conversation of transcripts that carry no conversation id."""
        self._answering: str | None = None

    def pending(self) -> str | None:
        return f"an answer in conversation {self._answering}, not finished" if self._answering else None

    async def handle_event(self, event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.server.info_event)
        elif Transcript.is_type(event.type):
            await self._answer(parsed(Transcript.from_event, event))
        return True

    async def _answer(self, request: Transcript) -> None:
        question = text_field(request.text, "the transcript", MAX_TEXT_CHARS).strip()
        conversation_id = self._conversation_id(request.context)
        context = {"conversation_id": conversation_id} if conversation_id is not None else None
        if not any(char.isalnum() for char in question):
            await self.write_event(NotHandled(text="There was no question in the transcript.", context=context).event())
            return
        requested = request.language if isinstance(request.language, str) else ""
        language = language_of(question, default=re.split(r"[-_]", requested, maxsplit=1)[0].lower() or "en")
        if conversation_id is not None:
            remembered = self.server.conversations.get(conversation_id)
        else:
            # Kept apart from the LRU, so no peer can name it and join it.
            remembered = self._own = self._own or new_conversation(
                self.server.config, self.connection_id, f"wyoming-{self.connection_id}"
            )
        async with remembered.lock:
            self._answering = remembered.name  # Kept if the peer leaves: the line logged about it names it.
            try:
                answer = await self._write_answer(remembered, question, language, context)
            except (BadRequest, VoicebotError):
                self._answering = None
                raise
            self._answering = None
        await self.write_event(Handled(text=answer, context=context).event())
        await self.write_event(HandledStop().event())

    def _conversation_id(self, context: object) -> str | None:
        given = context.get("conversation_id") if isinstance(context, dict) else None
        if isinstance(given, str) and given.strip() and len(given) <= MAX_CONVERSATION_ID_CHARS:
            return given
        return None

    async def _write_answer(
        self, remembered: _Remembered, question: str, language: str, context: dict[str, str] | None
    ) -> str:
        conversation = remembered.conversation
        remembered.turns += 1
        turn = remembered.turns
        prompt: dict[str, object] = {}

        def on_prompt(cost: PromptCost) -> None:
            prompt.update(cost=cost, earlier=len(conversation.exchanges), summary=bool(conversation.summary))

        try:
            generation = self.server.llm.generate(
                remembered.llm_key,
                lambda chat: conversation.prompt(question, language, chat),
                self.server.sampling,
                Priority.TYPED,
                on_prompt,
            )
        except LlmBusyError as error:
            raise BadRequest(str(error), "busy") from None
        started = time.monotonic()
        await self.write_event(HandledStart(context=context).event())
        pieces: list[str] = []
        try:
            async with generation:
                while True:
                    try:
                        async with asyncio.timeout(self.server.stall_s):
                            piece = await anext(generation)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise BadRequest(
                            f"the LLM wrote nothing for {self.server.stall_s:g} s (llm.stall_timeout_s)", "llm-stalled"
                        ) from None
                    pieces.append(piece)
                    await self.write_event(HandledChunk(text=piece).event())
        except RequestTooLargeError as error:
            raise BadRequest(str(error), "too-long") from None
        # The whole answer exactly as written, so the conversation's KV cache stays valid for its next turn.
        conversation.add(question, "".join(pieces))
        answer = "".join(pieces).strip()
        self.server.compress_in_background(remembered)
        cost, earlier = prompt.get("cost"), prompt.get("earlier", 0)
        log.info(
            "%s: conversation %s, turn %d: %d earlier exchange%s%s in the prompt, %s prompt tokens cached; "
            "answered in %.1f s: %r",
            self.label,
            remembered.name,
            turn,
            earlier,
            "" if earlier == 1 else "s",
            " and a summary" if prompt.get("summary") else "",
            f"{cost.cached} of {cost.tokens}" if isinstance(cost, PromptCost) else "no",
            time.monotonic() - started,
            answer[:200],
        )
        return answer
