"""The loaded stages: each model on its own worker thread pinned to its configured cores, behind its service.

`Engines` holds one owner per stage: the Listener (wake word, end of utterance, echo canceller),
AsrService, LlmService and TtsService. Each service also holds its stage's remote engine, when the
config names one, and the local model only where it is the engine or the fallback. A stage that was
not loaded raises one clear line when asked for, so nobody checks for None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from voicebot.asr import AsrService, Transcriber
from voicebot.config import Config
from voicebot.errors import VoicebotError
from voicebot.intents.service import IntentService
from voicebot.listen import Listener
from voicebot.llm import ChatModel
from voicebot.llm_service import LlmService
from voicebot.models.paths import ModelPaths
from voicebot.runtime.threads import PinnedWorker, resolve_cores
from voicebot.tts import Synthesizer, TtsService
from voicebot.vad import Endpointer, SileroVad
from voicebot.wake import SelfWakeGuard, WakeWordDetector

ALL_STAGES = frozenset({"listen", "asr", "intents", "llm", "tts"})
STAGE_NAMES = {
    "listen": "wake word detection",
    "asr": "speech recognition",
    "intents": "the intent stage (timers, lists, volume)",
    "llm": "the LLM",
    "tts": "speech synthesis",
}


class StageNotLoadedError(VoicebotError):
    """A stage was asked for that this command did not load."""


def local_stages(config: Config, stages: frozenset[str]) -> frozenset[str]:
    """The stages whose models load here: not those served remotely, unless kept as the fallback."""
    remote_only = {
        "asr": config.asr.backend != "local" and not config.asr.fallback,
        "tts": config.tts.backend != "local" and not config.tts.fallback,
        "llm": config.llm.backend != "local" and not config.llm.fallback,
    }
    return frozenset(stage for stage in stages if not remote_only.get(stage, False))


def _remote_engines(config: Config, stages: frozenset[str]) -> dict[str, Any]:
    """The clients of the stages served by other machines."""
    remotes: dict[str, Any] = {}
    if "asr" in stages and config.asr.backend == "wyoming":
        from voicebot.wyoming.client import WyomingTranscriber

        remotes["asr"] = WyomingTranscriber(config.asr)
    if "tts" in stages and config.tts.backend == "wyoming":
        from voicebot.wyoming.client import WyomingSynthesizer

        remotes["tts"] = WyomingSynthesizer(config.tts)
    if "llm" in stages and config.llm.backend == "openai":
        from voicebot.http.client import RemoteChat

        remotes["llm"] = RemoteChat(config.llm)
    return remotes


@dataclass
class Engines:
    """The loaded stages, each behind its one owner, and the pinned workers they run on."""

    config: Config
    paths: ModelPaths
    _stages: dict[str, Any] = field(default_factory=dict)
    workers: list[PinnedWorker] = field(default_factory=list)

    @classmethod
    def load(cls, config: Config, paths: ModelPaths, stages: frozenset[str] = ALL_STAGES) -> Engines:
        """Load the models for `stages`, each on its own thread pinned to its configured cores; a stage with a
        remote backend gets its client, and its local model only as the fallback."""
        engines = cls(config, paths)
        local = local_stages(config, stages)
        remotes = _remote_engines(config, stages)  # A bad URL is refused before any model loads.
        try:
            if "tts" in stages:
                engines._stages["tts"] = engines._load_tts("tts" in local, remotes.get("tts"))
            if "llm" in stages:
                engines._stages["llm"] = engines._load_llm("llm" in local, remotes.get("llm"))
            if "asr" in stages:
                engines._stages["asr"] = engines._load_asr("asr" in local, remotes.get("asr"))
            if "listen" in stages:
                engines._stages["listen"] = engines._load_listener()
            if "intents" in stages:
                intents = IntentService(config.intents, config.timers)
                engines._stages["intents"] = intents
                intents.warm_up()
        except BaseException:
            engines.close()
            raise
        return engines

    def _load_tts(self, local: bool, remote: Any) -> TtsService:
        config = self.config
        if not local:
            return TtsService(remote=remote)
        worker = self._worker("tts", resolve_cores(config.tts.cores, "tts"))
        synthesizer = worker.call(Synthesizer, self.paths.voices, config.tts, len(worker.cores))
        return TtsService(synthesizer, worker, remote, self.paths.voices)

    def _load_llm(self, local: bool, remote: Any) -> LlmService:
        config = self.config
        limits = (config.llm.kv_cache_slots, config.http.max_queued)
        if not local:
            return LlmService(None, None, *limits, remote=remote)
        worker = self._worker("llm", resolve_cores(config.llm.cores, "llm"))
        chat = ChatModel(self.paths.llm, config.llm, worker)
        return LlmService(chat, worker, *limits, remote=remote)

    def _load_asr(self, local: bool, remote: Any) -> AsrService:
        config = self.config
        if not local:
            return AsrService(remote=remote)
        worker = self._worker("asr", resolve_cores(config.asr.cores, "asr"))
        transcriber = worker.call(Transcriber, self.paths.asr, config.asr, len(worker.cores))
        return AsrService(transcriber, worker, remote, self.paths.asr)

    def _load_listener(self) -> Listener:
        config = self.config
        # The always-on stages share the TTS cores: they are light, and must not slow the LLM.
        worker = self._worker("listen", resolve_cores(config.tts.cores, "tts"))
        wake = worker.call(WakeWordDetector, config.wake)
        endpointer = worker.call(lambda: Endpointer(config.vad, SileroVad()))
        guard = worker.call(SelfWakeGuard, config.wake) if config.wake.ignore_own_voice else None
        canceller = None
        if config.audio.echo_canceller != "none":
            from voicebot.echo import make_echo_canceller

            canceller = worker.call(make_echo_canceller, config.audio.echo_canceller)
        return Listener(worker, wake, endpointer, canceller, guard)

    def _worker(self, name: str, cores: tuple[int, ...]) -> PinnedWorker:
        worker = PinnedWorker(name, cores)
        self.workers.append(worker)
        return worker

    def _stage(self, name: str) -> Any:
        try:
            return self._stages[name]
        except KeyError:
            raise StageNotLoadedError(f"{STAGE_NAMES[name]} is not loaded by this command") from None

    def worker(self, name: str) -> PinnedWorker:
        """The pinned worker thread called `name` (listen, asr, llm or tts)."""
        for worker in self.workers:
            if worker.name == name:
                return worker
        raise StageNotLoadedError(f"no {name} worker: {STAGE_NAMES.get(name, name)} is not loaded here")

    def has(self, stage: str) -> bool:
        """Whether `stage` (listen, asr, llm or tts) was loaded."""
        return stage in self._stages

    @property
    def listener(self) -> Listener:
        """Wake word, end of utterance and echo cancelling, on their worker."""
        return self._stage("listen")

    @property
    def asr(self) -> AsrService:
        """Speech recognition."""
        return self._stage("asr")

    @property
    def llm(self) -> LlmService:
        """The LLM: voice turns, typed requests and background work share it."""
        return self._stage("llm")

    @property
    def tts(self) -> TtsService:
        """Speech synthesis."""
        return self._stage("tts")

    @property
    def intents(self) -> IntentService:
        """Commands answered here before the LLM, and the timers, lists and volume they keep."""
        return self._stage("intents")

    def with_listener(self, listener: Listener, config: Config) -> Engines:
        """The same engines with another listener and the config it was made for (the benchmark's)."""
        return dataclasses.replace(self, config=config, _stages={**self._stages, "listen": listener})

    def with_stages(self, other: Engines, *stages: str) -> Engines:
        """These engines with `stages`, and their workers, taken from `other` (the benchmark's baseline on every
        core). A view: close the engines it was made from, not it."""
        workers = [w for w in self.workers if w.name not in stages] + [w for w in other.workers if w.name in stages]
        return dataclasses.replace(
            self, _stages={**self._stages, **{s: other._stages[s] for s in stages}}, workers=workers
        )

    def loaded_models(self) -> dict[str, Any]:
        """The model files each loaded stage uses, for /health and describe."""
        tts = self._stages.get("tts")
        asr = self._stages.get("asr")
        llm = self._stages.get("llm")
        return {
            "llm": llm.chat.model_path.name if llm is not None and llm.has_local else None,
            "asr": asr.model_dir.name if asr is not None and asr.model_dir is not None else None,
            "voices": {language: path.name for language, path in tts.voices.items()} if tts is not None else {},
            "wake": list(self.config.wake.models) if self.has("listen") else [],
        }

    def warm_up(self) -> None:
        """Run each model once, so the first question does not pay for first-call set-up; blocking."""
        self.warm_up_llm()
        if self.has("asr"):
            self.asr.warm_up()
        if self.has("tts"):
            self.tts.warm_up()

    def warm_up_llm(self) -> None:
        """Put the system prompt in llama.cpp's prompt cache; blocking."""
        if self.has("llm"):
            self.llm.warm_up(self.config.llm.system_prompt)

    def close(self, wait: bool = True) -> None:
        """Stop the worker threads; without `wait`, a model call still running is left to end on its own."""
        for worker in self.workers:
            worker.close(wait)
        self.workers.clear()
        if "intents" in self._stages:
            self._stages["intents"].close()
