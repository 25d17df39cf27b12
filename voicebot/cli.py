"""The `voicebot` command: run the assistant, or use one stage on its own."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shlex
import signal
import sys
import threading
import time

from voicebot import __version__
from voicebot.assistant import Assistant, RunOptions, load_engines, open_sink
from voicebot.audio import (
    INPUT_RATE_HZ,
    AudioSink,
    Clock,
    list_devices,
    read_wav,
)
from voicebot.config import Config, config_as_yaml, load_config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.intents.service import Ring
from voicebot.models.fetch import add_models_parser, models_command
from voicebot.reply import Responder
from voicebot.runtime.systemd import SystemdNotifier
from voicebot.runtime.trace import Tracer
from voicebot.tools.doctor import CheckOptions, Status, report, run_checks
from voicebot.tts import language_of

log = logging.getLogger("voicebot")


def build_parser() -> argparse.ArgumentParser:
    """The command line: each command's own options plus --config and --set."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="YAML config file (default: $VOICEBOT_CONFIG, /etc/voicebot/voicebot.yaml, "
        "~/.config/voicebot/voicebot.yaml)",
    )
    common.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config key for this run; the value is YAML; repeatable",
    )
    common.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log on stderr (default INFO)",
    )

    parser = argparse.ArgumentParser(
        prog="voicebot", description="An offline voice assistant: wake word, speech recognition, local LLM, speech."
    )
    parser.add_argument("--version", action="version", version=f"voicebot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the assistant",
        description="Listen for the wake word and answer questions aloud. "
        "With --input, exit once the input has ended and the last reply has been spoken.",
    )
    run.add_argument(
        "--input", metavar="WAV", help="hear this audio file (WAV, FLAC, MP3, OGG) instead of the microphone"
    )
    run.add_argument("--output", metavar="WAV", help="write replies to this WAV file instead of the speaker")
    run.add_argument("--trace", metavar="FILE", help="write pipeline events as JSON Lines to FILE")
    run.add_argument(
        "--fast",
        action="store_true",
        help="with --input: feed the file as fast as the pipeline takes it, not in real time",
    )
    run.add_argument(
        "--echo",
        metavar="GAIN[,DELAY_MS]",
        help="with --input: mix the replies back into the input, as a speaker heard by the microphone "
        "across a small room (e.g. 0.5,30), to test echo cancellation and self-wake",
    )

    ask = commands.add_parser(
        "ask",
        parents=[common],
        help="answer a typed question aloud",
        description="Send TEXT to the LLM, print the answer and speak it as it is written.",
    )
    ask.add_argument("text", help="the question")
    ask.add_argument("--output", metavar="WAV", help="write the answer to this WAV file instead of the speaker")
    ask.add_argument("--trace", metavar="FILE", help="write pipeline events as JSON Lines to FILE")

    say = commands.add_parser(
        "say", parents=[common], help="speak some text", description="Speak TEXT with the configured Piper voices."
    )
    say.add_argument("text", help="what to say")
    say.add_argument("--output", metavar="WAV", help="write the speech to this WAV file instead of the speaker")

    transcribe = commands.add_parser(
        "transcribe",
        parents=[common],
        help="print the transcript of a WAV file",
        description="Transcribe a WAV file with the configured speech recognition model.",
    )
    transcribe.add_argument("wav", help="the audio file: WAV, FLAC, MP3 or OGG, any rate and channel count")

    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="measure where each turn's time goes",
        description="Run reference turns (Piper's voice and real recordings, some with a pause mid-question) "
        "through the real pipeline in real time, against a sequential baseline on every core; measure barge-in "
        "reaction, a 20-turn conversation against a cache-less baseline, listening CPU and memory; report medians.",
    )
    bench.add_argument("--turns", type=int, default=5, help="reference turns to run (default 5)")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument("--plot", metavar="FILE", help="draw one turn's timeline as a PNG (needs matplotlib)")
    bench.add_argument("--markdown", metavar="FILE", help="fill in the results block of a Markdown page")
    bench.add_argument(
        "--short",
        action="store_true",
        help="one turn, one barge-in clip, a 5-turn conversation and 3 s of idle listening: "
        "a quick check that the benchmark works",
    )

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="talk to the assistant in text",
        description="Read questions from standard input, one per line, and print the answers, with the same LLM, "
        "memory and chunker as the voice loop. Exits at the end of input.",
    )
    chat.add_argument("--speak", action="store_true", help="also speak the answers")
    chat.add_argument("--output", metavar="WAV", help="with --speak: write the speech to this WAV file")
    chat.add_argument("--trace", metavar="FILE", help="write pipeline events as JSON Lines to FILE")

    commands.add_parser(
        "serve",
        parents=[common],
        help="serve the chat page and the OpenAI-compatible API, without audio",
        description="Serve the web chat page and POST /v1/chat/completions on http.host:http.port "
        "(default 127.0.0.1:8080), with the LLM only: no microphone, no speaker. "
        "voicebot run serves the same beside the voice loop when http.enabled is true.",
    )
    commands.add_parser(
        "wyoming",
        parents=[common],
        help="serve speech-to-text, TTS and the LLM over the Wyoming protocol (Home Assistant)",
        description="Serve this machine's models over the Wyoming protocol, each on its own port of wyoming.host "
        "(default 127.0.0.1): speech-to-text on wyoming.asr_port (10300), TTS on wyoming.tts_port (10200) and the "
        "LLM as a conversation agent on wyoming.handle_port (10500). Off loopback they are announced with zeroconf "
        "for Home Assistant to discover.",
    )
    commands.add_parser(
        "devices",
        parents=[common],
        help="list audio devices",
        description="List the sound devices PortAudio sees, for audio.input_device and audio.output_device.",
    )
    check = commands.add_parser(
        "check",
        parents=[common],
        help="check this machine is ready: config, models, llama.cpp build, cores, memory, sound",
        description="Check the config, the models, whether llama.cpp was built for this CPU, the CPU pinning plan, "
        "free memory, the sound server and the sound devices. Prints one line per finding and a fix for each "
        "problem; exits 1 if there is any problem.",
    )
    check.add_argument(
        "--no-audio", action="store_true", help="do not open the sound devices (a running assistant holds them)"
    )
    commands.add_parser(
        "config",
        parents=[common],
        help="print the config in effect",
        description="Print the settings in effect, after the config file and --set, as YAML. "
        "Save it as ~/.config/voicebot/voicebot.yaml to start a config of your own.",
    )
    add_models_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    _set_up_logging(args.log_level)
    try:
        if args.command == "devices":
            print(list_devices())
            return 0
        if args.command == "check":
            findings = run_checks(CheckOptions(args.config, tuple(args.set), audio=not args.no_audio))
            print(report(findings))
            return 1 if any(f.status is Status.FAIL for f in findings) else 0
        config = load_config(args.config, args.set)
        if args.command == "config":
            print(config_as_yaml(config), end="")
            return 0
        code = asyncio.run(_COMMANDS[args.command](args, config))
        if args.command in ("run", "serve", "wyoming"):
            _leave_model_calls_running(code)
        return code
    except VoicebotError as error:
        print(f"voicebot: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


class _JournalFormatter(logging.Formatter):
    """One line per event, with the sd-daemon(3) priority prefix journald reads as the log level."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(super().format(record).splitlines())
        return f"<{self.PRIORITIES.get(record.levelno, 6)}>{line}"


def _set_up_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter_class = _JournalFormatter if os.environ.get("JOURNAL_STREAM") else logging.Formatter
    handler.setFormatter(formatter_class("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)


def _leave_model_calls_running(code: int) -> None:
    """Exit now if a model call is still running (a transcription, a prompt being read): a stop must take
    no more than a moment, and the interpreter would otherwise wait for that thread."""
    deadline = time.monotonic() + 0.2
    running = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in running):
        log.info("not waiting for a model call still running")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def _run(args: argparse.Namespace, config: Config) -> int:
    if args.fast and not args.input:
        raise VoicebotError("--fast needs --input: only a file can be heard faster than real time")
    if args.echo and (not args.input or args.fast):
        raise VoicebotError("--echo needs --input in real time: it mixes the replies back into that file as it plays")
    options = RunOptions(
        config_path=args.config,
        overrides=tuple(args.set),
        input=args.input,
        output=args.output,
        realtime=not args.fast,
        echo=args.echo,
        trace=args.trace,
    )
    return await Assistant(config, options, SystemdNotifier.from_environment()).run()


async def _ask(args: argparse.Namespace, config: Config) -> int:
    question = _text_argument(args.text, "ask", "a question")
    clock = Clock()
    tracer = Tracer(clock, args.trace)
    engines = load_engines(config, frozenset({"llm", "tts", "intents"}))
    try:
        sink = open_sink(args.output, config, clock, engines, realtime=args.output is None)
        try:
            responder = Responder(engines, sink, tracer)
            reply = await _until_signal(_answer(engines, responder, question, tracer))
            await responder.close()
        finally:
            sink.close()
    finally:
        engines.close()
        tracer.close()
    if reply is not None:
        print(reply)
    return 0


async def _say(args: argparse.Namespace, config: Config) -> int:
    text = _text_argument(args.text, "say", "some text")
    clock = Clock()
    engines = load_engines(config, frozenset({"tts", "intents"}))  # intents: the volume set by voice
    try:
        sink = open_sink(args.output, config, clock, engines, realtime=args.output is None)
        try:
            await _until_signal(Responder(engines, sink, Tracer(clock)).say(text, language=language_of(text)))
        finally:
            sink.close()
    finally:
        engines.close()
    return 0


def _text_argument(text: str, command: str, what: str) -> str:
    """The text given on the command line, refused when there is nothing in it to say."""
    if not any(char.isalnum() for char in text):
        raise VoicebotError(
            f'{command}: the text {text!r} has nothing to say; give {what}, e.g. voicebot {command} "Hello"'
        )
    return text


async def _chat(args: argparse.Namespace, config: Config) -> int:
    if args.output and not args.speak:
        raise VoicebotError("--output needs --speak: only spoken answers can be written to a WAV file")
    clock = Clock()
    tracer = Tracer(clock, args.trace)
    engines = load_engines(config, frozenset({"llm", "tts", "intents"} if args.speak else {"llm", "intents"}))
    try:
        sink = open_sink(args.output, config, clock, engines, realtime=args.output is None) if args.speak else None
        try:
            await _until_signal(_chat_loop(engines, sink, tracer))
        finally:
            if sink is not None:
                sink.close()
    finally:
        engines.close()
        tracer.close()
    return 0


async def _chat_loop(engines: Engines, sink: AudioSink | None, tracer: Tracer) -> None:
    """Answer each line of standard input in one conversation, printing the answer as it is written."""
    loop = asyncio.get_running_loop()
    interactive = sys.stdin.isatty()

    def show(piece: str) -> None:
        print(piece, end=" ", flush=True)

    responder = Responder(engines, sink, tracer, on_piece=show)

    def ring(rang: Ring) -> None:
        tracer.emit("ring_start", timers=[rang.timer.name or rang.timer.alarm_at or round(rang.timer.duration_s)])
        print(f"\n[{rang.text}]", flush=True)

    timers = asyncio.create_task(engines.intents.run(ring), name="timers")
    for text in engines.intents.take_missed():
        print(f"[{text}]", flush=True)
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            question = line.strip()
            if not any(char.isalnum() for char in question):
                continue
            tracer.emit("question", text=question)
            reason = "answered"
            try:
                await _answer(engines, responder, question, tracer)
            except VoicebotError as error:
                reason = "error"
                print(f"voicebot: {error}", file=sys.stderr)
            tracer.emit("turn_end", reason=reason)
            print(flush=True)
    finally:
        timers.cancel()
        await asyncio.gather(timers, return_exceptions=True)
        await responder.close()


async def _answer(engines: Engines, responder: Responder, question: str, tracer: Tracer) -> str:
    """A typed question answered by the intent stage if it is a command it knows, else by the LLM; said aloud
    (or shown) either way."""
    language = language_of(question)
    handled = engines.intents.handle(question, language)
    if handled is None:
        return await responder.respond(question, language=language)
    match = handled.match
    tracer.emit("intent", intent=match.intent, slots=match.slots, language=match.language, match_ms=match.match_ms)
    if handled.text:
        if responder.sink is None:
            responder.on_piece(handled.text)
        else:
            await responder.say(handled.text, match.language)
    return handled.text


async def _serve(args: argparse.Namespace, config: Config) -> int:
    from voicebot.http.app import HttpServer, check_http_config, create_app

    check_http_config(config.http)
    engines = load_engines(config, frozenset({"llm", "intents"}))
    notifier = SystemdNotifier.from_environment()

    def on_started(url: str) -> None:
        print(f"voicebot: serving the chat page and the API on {url}", flush=True)
        notifier.ready(f"serving on {url}")

    app = create_app(engines.llm, config, engines.loaded_models(), intents=engines.intents)
    server = HttpServer(app, config.http, on_started)
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def stop() -> None:
        server.stop()
        # Typed answers still streaming end now, so the server's drain finishes without cutting them off.
        closing.append(asyncio.create_task(engines.llm.close()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    timers = asyncio.create_task(engines.intents.run(_ring_without_speaker), name="timers")
    try:
        await server.serve()
    finally:
        timers.cancel()
        await asyncio.gather(timers, return_exceptions=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        notifier.stopping()
        await asyncio.gather(*closing, return_exceptions=True)
        await engines.llm.close()
        engines.close(wait=False)
    return 0


async def _wyoming(args: argparse.Namespace, config: Config) -> int:
    from voicebot.wyoming.server import WyomingServers

    servers = WyomingServers(config)
    await servers.bind()  # A port in use is found before the models load.
    notifier = SystemdNotifier.from_environment()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engines: Engines | None = None
    try:
        # What it serves is this machine's own models, whatever engines voicebot run itself would ask.
        engines = load_engines(_local_backends(config), frozenset({"asr", "llm", "tts"}))
        await servers.start(engines.asr, engines.tts, engines.llm)
        print(f"voicebot: serving Wyoming: {servers.summary}", flush=True)
        notifier.ready(f"serving Wyoming on {config.wyoming.host}")
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        notifier.stopping()
        await servers.stop()
        if engines is not None:
            await engines.llm.close()
            engines.close(wait=False)
    return 0


def _ring_without_speaker(rang: Ring) -> None:
    log.info("%s (voicebot serve has no speaker to ring it)", rang.text)


def _local_backends(config: Config) -> Config:
    """`config` with every stage on this machine's own model."""
    return dataclasses.replace(
        config,
        asr=dataclasses.replace(config.asr, backend="local"),
        llm=dataclasses.replace(config.llm, backend="local"),
        tts=dataclasses.replace(config.tts, backend="local"),
    )


async def _transcribe(args: argparse.Namespace, config: Config) -> int:
    audio = read_wav(args.wav).resampled(INPUT_RATE_HZ)
    engines = load_engines(config, frozenset({"asr"}))
    try:
        transcript = await engines.asr.transcribe(audio.samples)
    finally:
        engines.close()
    print(transcript.text)
    return 0


async def _bench(args: argparse.Namespace, config: Config) -> int:
    from voicebot.tools.bench import format_table, options_from, read_markdown_page, run_bench, update_markdown

    if args.turns < 1:
        raise VoicebotError(f"--turns {args.turns}: run at least one turn")
    options = options_from(args.turns, args.short, args.json, args.plot, args.markdown)
    if options.markdown:
        read_markdown_page(options.markdown)
    # The benchmark drives its own event loops, one per turn, so it runs outside this one.
    results = await asyncio.get_running_loop().run_in_executor(None, run_bench, config, options)
    print(format_table(results))
    if options.markdown:
        update_markdown(options.markdown, results, shlex.join(["voicebot", *sys.argv[1:]]))
    return 0


_COMMANDS = {
    "run": _run,
    "ask": _ask,
    "say": _say,
    "chat": _chat,
    "transcribe": _transcribe,
    "bench": _bench,
    "models": models_command,
    "serve": _serve,
    "wyoming": _wyoming,
}


async def _until_signal(work):
    """Run `work`; SIGTERM or SIGINT cancel it cleanly (the turn stops, files are closed)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        log.info("stopped by signal")
        return None
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
