"""`voicebot run` as a long-lived program: devices lost and found, SIGHUP reload, SIGTERM stop, systemd.

The Pipeline answers questions; this owns what lives longer than one pipeline: the config and the
models loaded for it, the microphone (or input file), the speaker (or output file), and the
conversation with systemd.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicebot.audio import (
    AudioSink,
    AudioSource,
    Backoff,
    Clock,
    MicrophoneSource,
    PlaybackTimeline,
    SpeakerSink,
    VolumeSink,
    WavSink,
    WavSource,
)
from voicebot.config import Config, load_config
from voicebot.engines import Engines, local_stages
from voicebot.errors import AudioDeviceError, VoicebotError
from voicebot.models.paths import resolve_models
from voicebot.pipeline import Pipeline
from voicebot.runtime.systemd import SystemdNotifier
from voicebot.runtime.tasks import cancel_and_wait
from voicebot.runtime.trace import Tracer
from voicebot.tts import REMOTE_SPEECH_RATE_HZ

if TYPE_CHECKING:
    from voicebot.http.app import HttpServer
    from voicebot.satellite import Satellite

log = logging.getLogger(__name__)

STAGES = frozenset({"listen", "asr", "intents", "llm", "tts"})


@dataclass(frozen=True)
class RunOptions:
    """What `voicebot run` was asked for on its command line."""

    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    input: str | None = None
    output: str | None = None
    realtime: bool = True
    echo: str | None = None
    trace: str | None = None


def open_sink(
    output: str | None,
    config: Config,
    clock: Clock,
    engines: Engines,
    realtime: bool = True,
    timeline: PlaybackTimeline | None = None,
    open_now: bool = True,
) -> AudioSink:
    """Replies go to the WAV file `output`, else to the configured speaker (opened later unless `open_now`)."""
    sink: AudioSink
    if output:
        # Speech from elsewhere (a remote server, Home Assistant) is resampled to the file's rate.
        rate_hz = engines.tts.rate_hz if engines.has("tts") else REMOTE_SPEECH_RATE_HZ
        sink = WavSink(Path(output), clock, realtime=realtime, rate_hz=rate_hz, timeline=timeline)
    else:
        audio = config.audio
        sink = SpeakerSink(audio.output_device, clock, audio.output_sample_rate_hz, timeline, audio.stall_s, open_now)
    # The volume set by voice applies to everything voicebot plays.
    return VolumeSink(sink, engines.intents.volume) if engines.has("intents") else sink


def load_engines(config: Config, stages: frozenset[str] = STAGES) -> Engines:
    """Load and warm up the models for `stages`; blocking."""
    engines = Engines.load(config, resolve_models(config, local_stages(config, stages)), stages)
    try:
        engines.warm_up()
    except BaseException:
        engines.close()
        raise
    return engines


def run_stages(config: Config) -> frozenset[str]:
    """The stages `voicebot run` loads: as a satellite, Home Assistant hears the question and answers it."""
    satellite = config.satellite
    return frozenset({"listen"}) if satellite.enabled and not satellite.fallback_local else STAGES


def check_config(config: Config) -> None:
    """Settings that only make sense together, checked before any model loads."""
    if config.http.enabled:
        from voicebot.http.app import check_http_config

        check_http_config(config.http, config.llm)
    if config.satellite.enabled:
        from voicebot.satellite import check_satellite_config

        check_satellite_config(config.satellite)


@dataclass
class RunningHttp:
    """The HTTP server beside one pipeline."""

    server: HttpServer
    task: asyncio.Task[None]

    async def stopped(self) -> None:
        """Wait for the server to finish the open requests (for a moment at most) after `server.stop()`."""
        await asyncio.gather(self.task, return_exceptions=True)


class Assistant:
    """Runs the pipeline until the input ends or a signal stops it; reloads its config on SIGHUP."""

    def __init__(self, config: Config, options: RunOptions, notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.options = options
        self.notifier = notifier or SystemdNotifier(None)
        self.clock = Clock()
        self.timeline = PlaybackTimeline()
        self.tracer = Tracer(self.clock, options.trace)
        self.source: AudioSource = self._source(config)
        self.sink: AudioSink | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._listened = False
        self._microphone_backoff = Backoff()

    @property
    def keep_trying(self) -> bool:
        """Whether a lost device is waited for (under a service) rather than ending the run."""
        policy = self.config.audio.on_device_loss
        return policy == "retry" or (policy == "auto" and self.notifier.active)

    def _source(self, config: Config) -> AudioSource:
        if self.options.input:
            return WavSource.from_file(
                self.options.input, self.clock, realtime=self.options.realtime, echo=self._room_echo()
            )
        return MicrophoneSource.from_config(config.audio, self.clock)

    def _room_echo(self):
        if not self.options.echo:
            return None
        from voicebot.echo import RoomEcho, parse_echo_option

        try:
            gain, delay_ms = parse_echo_option(self.options.echo)
        except ValueError as error:
            raise VoicebotError(str(error)) from None
        room = RoomEcho(gain, delay_ms)
        return lambda frame_end_t, samples: room.apply(self.timeline.render(frame_end_t, samples))

    def _open_sink(self, config: Config, engines: Engines) -> AudioSink:
        options = (self.options.output, config, self.clock, engines, self.options.realtime, self.timeline)
        try:
            return open_sink(*options)
        except AudioDeviceError as error:
            if not self.keep_trying:
                raise
            log.error("%s; replies stay silent until it can be opened", error)
            return open_sink(*options, open_now=False)

    async def run(self) -> int:
        """Load, listen and answer until the input ends or SIGTERM/SIGINT; SIGHUP reloads the config."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        keep_alive = asyncio.create_task(self.notifier.keep_alive(), name="watchdog")
        engines: Engines | None = None
        try:
            started = time.monotonic()
            check_config(self.config)
            self.notifier.status("loading models")
            engines = await self._load(self.config)
            if engines is None:
                return 0
            log.info(
                "ready in %.1f s (profile %s, config %s)",
                time.monotonic() - started,
                self.config.profile,
                self.config.source,
            )
            while True:
                self.sink = self.sink or self._open_sink(self.config, engines)
                replacement = await self._run_until_reload(engines)
                if replacement is None:
                    return 0
                config, new_engines = replacement
                engines.close()
                engines = new_engines
                self._apply_device_changes(config, engines)
                self.config = config
                log.info("config reloaded from %s; the conversation starts afresh", config.source)
                self.tracer.emit("config_reloaded", source=config.source)
        finally:
            self.notifier.stopping()
            await cancel_and_wait(keep_alive)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self.sink is not None:
                self.sink.close()
            if engines is not None:
                # A model call still running (a transcription, a prompt being read) is not waited for.
                engines.close(wait=False)
            self.tracer.close()
            self.notifier.close()

    async def _load(self, config: Config) -> Engines | None:
        """Load the models off the event loop, so the watchdog keeps being fed; None if stopped meanwhile."""
        loading = asyncio.ensure_future(asyncio.to_thread(load_engines, config, run_stages(config)))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(stop)
        if loading.done():
            return loading.result()
        loading.add_done_callback(lambda done: done.exception() is None and done.result().close(wait=False))
        log.info("stopped by signal while loading models")
        return None

    async def _run_until_reload(self, engines: Engines) -> tuple[Config, Engines] | None:
        """Run one pipeline; returns the config and models to reload with, or None when the run is over."""
        assert self.sink is not None
        if self.config.satellite.enabled:
            from voicebot.satellite import Satellite

            pipeline = Satellite(
                engines, self.source, self.sink, self.tracer, timeline=self.timeline, on_listening=self._on_listening
            )
            http = None
        else:
            pipeline = Pipeline(
                engines, self.source, self.sink, self.tracer, timeline=self.timeline, on_listening=self._on_listening
            )
            http = self._start_http(engines, pipeline)
        running = asyncio.create_task(self._listen(pipeline), name="pipeline")
        try:
            while True:
                stop = asyncio.create_task(self._stop.wait())
                reload = asyncio.create_task(self._reload.wait())
                await asyncio.wait({running, stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                await cancel_and_wait(stop, reload)
                if running.done():
                    running.result()  # An error that ended the run is raised here.
                    return None
                if self._stop.is_set():
                    log.info("stopped by signal")
                    return None
                self._reload.clear()
                replacement = await self._prepare_reload()
                if replacement is not None:
                    return replacement
        finally:
            await cancel_and_wait(running)
            if http is not None:
                http.server.stop()  # No new connections from here on.
            if engines.has("llm"):
                # Typed answers still streaming end now, so the server's drain finishes without cutting them off.
                await engines.llm.close()
            if http is not None:
                await http.stopped()

    def _start_http(self, engines: Engines, pipeline: Pipeline) -> RunningHttp | None:
        """Serve the API and the chat page beside the voice loop, if http.enabled; a failure to listen is
        logged, and the voice loop goes on."""
        if not self.config.http.enabled:
            return None
        from voicebot.http.app import HttpServer, VoiceLink, create_app

        voice = VoiceLink(state=lambda: pipeline.state.value, speak=pipeline.speak_text)
        server = HttpServer(
            create_app(
                engines.llm,
                self.config,
                engines.loaded_models(),
                voice,
                engines.intents if engines.has("intents") else None,
            ),
            self.config.http,
            on_started=lambda url: log.info("serving the chat page and the API on %s", url),
        )
        return RunningHttp(server, asyncio.create_task(self._serve_http(server), name="http"))

    async def _serve_http(self, server) -> None:
        try:
            await server.serve()
        except VoicebotError as error:
            log.error("%s; the voice loop goes on without it", error)
            self.tracer.emit("http_failed", error=str(error))

    async def _prepare_reload(self) -> tuple[Config, Engines] | None:
        """Read the config again and load its models while the old ones keep answering; None if refused."""
        self.notifier.reloading()
        try:
            config = load_config(self.options.config_path, self.options.overrides)
            check_config(config)
            engines = await asyncio.to_thread(load_engines, config, run_stages(config))
        except VoicebotError as error:
            log.error("config reload refused, the old config stays in effect: %s", error)
            self.tracer.emit("config_reload_refused", error=str(error))
            self.notifier.ready("listening (config reload refused)")
            return None
        return config, engines

    def _apply_device_changes(self, config: Config, engines: Engines) -> None:
        """Reopen the devices whose settings changed; an input or output file carries on."""
        old, new = self.config.audio, config.audio
        if not self.options.input and (
            (old.input_device, old.input_sample_rate_hz, old.input_queue_s, old.stall_s, old.zero_input_stall_s)
            != (new.input_device, new.input_sample_rate_hz, new.input_queue_s, new.stall_s, new.zero_input_stall_s)
        ):
            self.source = MicrophoneSource.from_config(new, self.clock)
        if not self.options.output and (old.output_device, old.output_sample_rate_hz, old.stall_s) != (
            new.output_device,
            new.output_sample_rate_hz,
            new.stall_s,
        ):
            assert self.sink is not None
            self.sink.close()
            self.sink = None
        self.notifier.ready("listening")

    async def _listen(self, pipeline: Pipeline | Satellite) -> None:
        """Run the pipeline; under a service, a lost microphone is waited for and listening starts afresh."""
        while True:
            try:
                await pipeline.run()
                return
            except AudioDeviceError as error:
                if not self.keep_trying:
                    raise
                wait_s = self._microphone_backoff.next_s()
                if self._microphone_backoff.failures == 1:
                    log.error("%s; listening again once it is back", error)
                    self.tracer.emit("device_lost", device="microphone", error=str(error))
                    self.notifier.status(f"microphone lost: {error}")
                else:
                    log.debug("microphone still unavailable (%s); next try in %.0f s", error, wait_s)
                await asyncio.sleep(wait_s)

    def _on_listening(self) -> None:
        if self._microphone_backoff.failures:
            log.info("microphone is back; waiting for the wake word")
            self.tracer.emit("device_back", device="microphone")
            self.notifier.status("listening")
        if not self._listened:
            self._listened = True
            self.tracer.emit("listening")
            self.notifier.ready("listening")
        self._microphone_backoff.reset()
