"""Four designs on the same turns, each stage's time from the trace, and the older floor.

voicebot's design (early start at the first pause, then streaming); streaming alone; and the
sequential baseline of the original chat-bot design (wait for the end of speech, transcribe, generate
the whole answer, synthesise all of it, play). A design with no overlap has no reason to leave a core
idle, so the baseline's LLM and TTS get every core; for comparison with earlier runs it also runs on
voicebot's own pinning.

First audio cannot come before the endpoint decision, so the pipeline's own overhead is first audio −
endpoint decided. The older floor (the hangover plus each stage alone) is kept beside it, labelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from voicebot.audio import INPUT_RATE_HZ
from voicebot.chunker import SentenceChunker
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.llm import Conversation, Sampling, system_prompts
from voicebot.llm_service import Priority
from voicebot.models.paths import ModelPaths
from voicebot.reply import VOICE_CONVERSATION
from voicebot.runtime.threads import available_cores
from voicebot.tools.bench.measure import first_event, timed_async
from voicebot.tools.bench.turns import ReferenceTurn
from voicebot.vad import PRE_ROLL_S, TAIL_S

# (results key, column heading) of each design's stage summaries, in table order.
DESIGNS = (
    ("stages", "voicebot"),
    ("streaming_only_stages", "streaming only"),
    ("sequential_stages", "sequential, every core"),
    ("sequential_voicebot_cores_stages", "sequential, voicebot's cores"),
)
STAGES = {
    "wake_delay_s": "wake word end → wake",
    "endpoint_delay_s": "end of speech → endpoint decided",
    "asr_s": "ASR",
    "llm_first_token_s": "LLM to first token",
    "llm_first_sentence_s": "LLM to first sentence",
    "tts_first_audio_s": "TTS to first audio",
    "overhead_after_endpoint_s": "endpoint decided → first reply audio",
    "first_audio_s": "end of speech → first reply audio",
    "traced_latency_s": "trace: speech_end → playback_start",
    "answer_spoken_s": "end of speech → whole answer spoken",
}


def stage_times(turn: ReferenceTurn, events: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage's time in one run, from its trace and where the turn's speech really ended."""
    speech_end = first_event(events, "speech_end")
    decided_at = speech_end["t"] + speech_end["endpoint_delay_s"]
    transcript = first_event(events, "transcript")
    transcript_at = transcript["t"]
    first_sentence_at = first_event(events, "sentence")["t"]
    first_audio_at = first_event(events, "playback_start")["t"]
    return {
        "wake_delay_s": first_event(events, "wake")["t"] - turn.wake_end_s,
        "endpoint_delay_s": decided_at - turn.speech_end_s,
        "asr_s": transcript["asr_s"],
        "llm_first_token_s": first_event(events, "llm_first_token")["t"] - transcript_at,
        "llm_first_sentence_s": first_sentence_at - transcript_at,
        "tts_first_audio_s": first_event(events, "tts_first_audio")["t"] - first_sentence_at,
        "overhead_after_endpoint_s": first_audio_at - decided_at,
        "first_audio_s": first_audio_at - turn.speech_end_s,
        "traced_latency_s": first_audio_at - speech_end["t"],
        "answer_spoken_s": first_event(events, "playback_end")["t"] - turn.speech_end_s,
    }


def on_every_core(engines: Engines, config: Config, paths: ModelPaths) -> tuple[Engines, Engines]:
    """The LLM and the voice loaded again on every core, for the sequential baseline: returns (loaded, the
    engines with those two stages taken from it)."""
    every = available_cores()
    spread = dataclasses.replace(
        config,
        llm=dataclasses.replace(config.llm, cores=every),
        tts=dataclasses.replace(config.tts, cores=every),
    )
    loaded = Engines.load(spread, paths, frozenset({"llm", "tts"}))
    try:
        loaded.warm_up()
    except BaseException:
        loaded.close()
        raise
    return loaded, engines.with_stages(loaded, "llm", "tts")


def floor(engines: Engines, config: Config, turn: ReferenceTurn, events: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage alone at its minimum: ASR of the utterance, LLM to the first sentence warm, TTS of it."""
    return asyncio.run(_floor(engines, config, turn, events))


async def _floor(
    engines: Engines, config: Config, turn: ReferenceTurn, events: list[dict[str, Any]]
) -> dict[str, float]:
    start = max(0, int((turn.speech_start_s - PRE_ROLL_S) * INPUT_RATE_HZ))
    end = int((turn.speech_end_s + TAIL_S) * INPUT_RATE_HZ)
    utterance = turn.audio.samples[start:end]
    asr_s, transcript = await timed_async(engines.asr.transcribe(utterance))
    question = first_event(events, "transcript")["text"] or transcript.text
    conversation = Conversation(config.conversation, system_prompts(config.llm))
    tokens = await engines.llm.worker.run(conversation.prompt, question, "en", engines.llm.chat)
    await _first_sentence(engines, config, tokens)  # Warm llama.cpp's prompt cache with this very prompt.
    llm_s, sentence = await timed_async(_first_sentence(engines, config, tokens))
    tts_s, _ = await timed_async(_first_audio(engines, sentence))
    return {
        "vad_hangover_s": config.vad.hangover_s,
        "asr_s": asr_s,
        "llm_first_sentence_s": llm_s,
        "tts_first_audio_s": tts_s,
        "total_s": config.vad.hangover_s + asr_s + llm_s + tts_s,
    }


async def _first_sentence(engines: Engines, config: Config, tokens: list[int]) -> str:
    """The first sentence the LLM service writes for the prompt `tokens`, as a voice turn would ask it."""
    chunker = SentenceChunker(config.tts.first_piece_chars, config.tts.max_piece_chars)
    sampling = Sampling.from_config(config.llm)
    async with engines.llm.generate(VOICE_CONVERSATION, lambda chat: tokens, sampling, Priority.VOICE) as answer:
        async for token in answer:
            pieces = chunker.feed(token)
            if pieces:
                return pieces[0]
    return (chunker.flush() or ["."])[0]


async def _first_audio(engines: Engines, text: str) -> None:
    """Wait for the TTS service's first audio of `text`."""
    async with contextlib.aclosing(engines.tts.synthesize(text)) as audio:
        await anext(audio, None)
