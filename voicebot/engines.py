"""The loaded models, each on its own worker thread pinned to its configured cores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from voicebot.asr import Transcriber
from voicebot.config import Config
from voicebot.llm import ChatModel
from voicebot.llm_service import LlmService
from voicebot.models import ModelPaths
from voicebot.threads import PinnedWorker, resolve_cores
from voicebot.tts import Synthesizer
from voicebot.vad import Endpointer, SileroVad
from voicebot.wake import SelfWakeGuard, WakeWordDetector

if TYPE_CHECKING:
    from voicebot.echo import EchoCanceller
    from voicebot.remote import RemoteChat, WyomingSynthesizer, WyomingTranscriber

ALL_STAGES = frozenset({"listen", "asr", "llm", "tts"})


def local_stages(config: Config, stages: frozenset[str]) -> frozenset[str]:
    """The stages whose models load here: not those served remotely, unless kept as the fallback."""
    remote_only = {
        "asr": config.asr.backend != "local" and not config.asr.fallback,
        "tts": config.tts.backend != "local" and not config.tts.fallback,
        "llm": config.llm.backend != "local" and not config.llm.fallback,
    }
    return frozenset(stage for stage in stages if not remote_only.get(stage, False))


@dataclass
class Engines:
    """The loaded models and the pinned worker thread each one runs on."""

    config: Config
    listen_worker: PinnedWorker | None = None
    asr_worker: PinnedWorker | None = None
    llm_worker: PinnedWorker | None = None
    tts_worker: PinnedWorker | None = None
    wake: WakeWordDetector | None = None
    endpointer: Endpointer | None = None
    transcriber: Transcriber | None = None
    chat: ChatModel | None = None
    llm: LlmService | None = None
    """The one way to use `chat` once loaded: voice turns, typed requests and background work share it."""
    synthesizer: Synthesizer | None = None
    echo_canceller: EchoCanceller | None = None
    self_wake_guard: SelfWakeGuard | None = None
    workers: list[PinnedWorker] = field(default_factory=list)
    paths: ModelPaths | None = None
    remote_asr: WyomingTranscriber | None = None
    """Speech recognition on a Wyoming server (asr.backend: wyoming); `transcriber` is its fallback, if loaded."""
    remote_tts: WyomingSynthesizer | None = None
    """Speech synthesis on a Wyoming server (tts.backend: wyoming); `synthesizer` is its fallback, if loaded."""
    remote_llm: RemoteChat | None = None
    """The LLM on an OpenAI-compatible server (llm.backend: openai); `llm` is its fallback, if loaded."""

    @classmethod
    def load(cls, config: Config, paths: ModelPaths, stages: frozenset[str] = ALL_STAGES) -> Engines:
        """Load the models for `stages`, each on its own thread pinned to its configured cores; a stage with a
        remote backend gets its client, and its local model only as the fallback."""
        engines = cls(config, paths=paths)
        engines._connect_remotes(stages)
        stages = local_stages(config, stages)
        try:
            if "tts" in stages:
                engines.tts_worker = engines._worker("tts", resolve_cores(config.tts.cores, "tts"))
                engines.synthesizer = engines.tts_worker.call(
                    Synthesizer, paths.voices, config.tts, len(engines.tts_worker.cores)
                )
            if "llm" in stages:
                engines.llm_worker = engines._worker("llm", resolve_cores(config.llm.cores, "llm"))
                engines.chat = ChatModel(paths.llm, config.llm, engines.llm_worker)
                engines.llm = LlmService(
                    engines.chat, engines.llm_worker, config.llm.kv_cache_slots, config.http.max_queued
                )
            if "asr" in stages:
                engines.asr_worker = engines._worker("asr", resolve_cores(config.asr.cores, "asr"))
                engines.transcriber = engines.asr_worker.call(
                    Transcriber, paths.asr, config.asr, len(engines.asr_worker.cores)
                )
            if "listen" in stages:
                # The always-on stages share the TTS cores: they are light, and must not slow the LLM.
                engines.listen_worker = engines._worker("listen", resolve_cores(config.tts.cores, "tts"))
                engines.wake = engines.listen_worker.call(WakeWordDetector, config.wake)
                engines.endpointer = engines.listen_worker.call(lambda: Endpointer(config.vad, SileroVad()))
                if config.wake.ignore_own_voice:
                    engines.self_wake_guard = engines.listen_worker.call(SelfWakeGuard, config.wake)
                if config.audio.echo_canceller != "none":
                    from voicebot.echo import make_echo_canceller

                    engines.echo_canceller = engines.listen_worker.call(
                        make_echo_canceller, config.audio.echo_canceller
                    )
        except BaseException:
            engines.close()
            raise
        return engines

    def _connect_remotes(self, stages: frozenset[str]) -> None:
        from voicebot.remote import RemoteChat, WyomingSynthesizer, WyomingTranscriber

        config = self.config
        if "asr" in stages and config.asr.backend == "wyoming":
            self.remote_asr = WyomingTranscriber(config.asr)
        if "tts" in stages and config.tts.backend == "wyoming":
            self.remote_tts = WyomingSynthesizer(config.tts)
        if "llm" in stages and config.llm.backend == "openai":
            self.remote_llm = RemoteChat(config.llm)

    def _worker(self, name: str, cores: tuple[int, ...]) -> PinnedWorker:
        worker = PinnedWorker(name, cores)
        self.workers.append(worker)
        return worker

    def warm_up(self) -> None:
        """Run each model once, so the first question does not pay for first-call set-up."""
        self.warm_up_llm()
        if self.transcriber is not None and self.asr_worker is not None:
            self.asr_worker.call(self.transcriber.transcribe, np.zeros(16000, np.float32))
        if self.synthesizer is not None and self.tts_worker is not None:
            self.tts_worker.call(lambda: list(self.synthesizer.synthesize("Ready.")))

    def warm_up_llm(self) -> None:
        """Put the system prompt in llama.cpp's prompt cache."""
        if self.chat is not None and self.llm_worker is not None:
            self.llm_worker.call(self.chat.warm_up, self.config.llm.system_prompt)

    def close(self, wait: bool = True) -> None:
        """Stop the worker threads; without `wait`, a model call still running is left to end on its own."""
        for worker in self.workers:
            worker.close(wait)
        self.workers.clear()
