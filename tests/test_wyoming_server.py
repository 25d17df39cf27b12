"""voicebot wyoming: the real command with the bundled models, and wyoming's own client as the peer.

One server on 0.0.0.0 (announced with zeroconf) serves most tests over 127.0.0.1; a second one on
127.0.0.1 shows a loopback server is not announced and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, espeak
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import HandledChunk, HandledStart
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice
from wyoming_peer import (
    RawPeer,
    WyomingProcess,
    ask,
    ask_on,
    audio_events,
    client,
    describe,
    pcm_of,
    read_speech,
    synthesize,
    synthesize_streamed,
    transcribe,
)

from voicebot.audio import INPUT_RATE_HZ, read_wav

pytestmark = pytest.mark.slow

SCENARIO_TIMEOUT_S = 60
MAX_AUDIO_S = 5
SERVICE_TYPE = "_wyoming._tcp.local."


def run(scenario):
    """Run one async scenario, bounded."""

    async def bounded():
        async with asyncio.timeout(SCENARIO_TIMEOUT_S):
            return await scenario

    return asyncio.run(bounded())


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """voicebot wyoming on every interface, announced, greedy sampling, audio capped at MAX_AUDIO_S."""
    log = tmp_path_factory.mktemp("wyoming") / "server.log"
    options = ("--set", "llm.temperature=0", "--set", f"wyoming.max_audio_s={MAX_AUDIO_S}")
    process = WyomingProcess(log, host="0.0.0.0", options=options).wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def whisper():
    """faster-whisper tiny.en in this process, to hear what the TTS server said."""
    from faster_whisper import WhisperModel

    from voicebot.config import config_from_dict
    from voicebot.models.paths import resolve_asr

    return WhisperModel(
        str(resolve_asr(config_from_dict({"profile": "bundled"}))), device="cpu", compute_type="int8", cpu_threads=1
    )


def heard(whisper, speech, rate: int) -> set[str]:
    audio = speech.samples()
    if rate != INPUT_RATE_HZ:
        import soxr

        audio = soxr.resample(audio, rate, INPUT_RATE_HZ).astype(np.float32)
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1)
    return words(" ".join(segment.text for segment in segments))


def test_describe_names_the_models_actually_loaded(server):
    asr, tts, handle = (run(describe(server.ports[name])) for name in ("asr", "tts", "handle"))

    (program,) = asr.asr
    assert program.installed and [m.name for m in program.models] == ["faster-whisper-tiny.en"]
    assert program.models[0].languages == ["en"] and program.models[0].installed
    assert "MIT" in program.models[0].description
    (program,) = tts.tts
    assert program.installed and program.supports_synthesize_streaming
    assert [(v.name, v.languages) for v in program.voices] == [("en_US-joe-medium", ["en_US"])]
    assert "CC0" in program.voices[0].description and program.voices[0].installed
    (program,) = handle.handle
    assert program.installed and program.supports_handled_streaming and not program.supports_home_control
    assert [m.name for m in program.models] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert program.models[0].languages == ["en", "zh"]
    assert "apache-2.0" in program.models[0].description
    # Each server describes only its own service.
    assert not (asr.tts or asr.handle or tts.asr or tts.handle or handle.asr or handle.tts)


@pytest.mark.parametrize("rate, width, channels", [(22050, 2, 2), (48000, 4, 1), (8000, 1, 1)])
def test_transcribes_a_spoken_question_sent_in_any_format(server, speech_dir, rate, width, channels):
    spoken = read_wav(espeak("What is the capital of France?", speech_dir)).resampled(rate)
    pcm = pcm_of(spoken.samples, width, channels)

    async def scenario():
        async with client(server.ports["asr"]) as peer:
            return await transcribe(peer, pcm, rate, width, channels)

    event = run(scenario())

    assert Transcript.is_type(event.type), event
    transcript = Transcript.from_event(event)
    assert {"capital", "france"} <= words(transcript.text), transcript
    assert transcript.language == "en"
    server.wait_for_line(rf"{rate} Hz, {8 * width}-bit, {'mono' if channels == 1 else 'stereo'}\) transcribed")


def test_synthesizes_a_whole_text(server, whisper):
    speech = run(synthesize(server.ports["tts"], "The quick brown fox jumps over the lazy dog."))

    assert speech.types[0] == "audio-start" and speech.types[-1] == "audio-stop"
    assert set(speech.types[1:-1]) == {"audio-chunk"}
    start = speech.start
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    assert 1.5 < len(speech.samples()) / start.rate < 6
    assert {"quick", "brown", "fox", "lazy", "dog"} <= heard(whisper, speech, start.rate)


def test_a_voice_is_chosen_by_name_and_an_unknown_one_is_named_once_in_the_log(server):
    port = server.ports["tts"]
    mark = len(server.lines())

    async def scenario():
        spoken = []
        for voice in ("en_US-joe-medium", "de_DE-nobody-low", "de_DE-nobody-low"):
            async with client(port) as peer:
                await peer.write_event(Synthesize(text="Hello there.", voice=SynthesizeVoice(name=voice)).event())
                spoken.append(await read_speech(peer, "audio-stop"))
        return spoken

    spoken = run(scenario())

    assert all(len(speech.samples()) > 0.3 * speech.start.rate for speech in spoken)
    warnings = [line for line in server.lines()[mark:] if "no voice named" in line]
    assert warnings == [
        "WARNING voicebot.wyoming.tts: wyoming tts: no voice named 'de_DE-nobody-low' (this server has "
        "en_US-joe-medium); the text's language chooses"
    ], warnings


def test_streamed_text_is_spoken_sentence_by_sentence_as_it_arrives(server, whisper):
    # The first sentence is complete once "Then" arrives; the rest of the text is held back until audio comes.
    first = ["The quick brown fox ", "jumps over the lazy dog. Then", " it runs"]
    rest = [" far away into the gre", "en forest."]

    speech = run(synthesize_streamed(server.ports["tts"], first, rest, wait_s=20))

    assert speech.first_audio_before_rest, "no audio came before the rest of the text was sent"
    assert speech.chunk_times[0] < speech.last_text_sent_at
    # One audio stream for the whole request, the whole text sent for compatibility not spoken again.
    assert speech.types.count("audio-start") == 1 and speech.types.count("audio-stop") == 1
    assert speech.types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert len(speech.samples()) / speech.start.rate < 8
    assert {"fox", "lazy", "dog", "runs", "forest"} <= heard(whisper, speech, speech.start.rate)
    line = server.wait_for_line(r"said \d+ characters \(streamed\)")
    assert f"said {len(''.join(first + rest))} characters" in line, line


def test_a_conversation_remembers_its_earlier_turns(server):
    port = server.ports["handle"]
    mark = len(server.lines())

    first = run(ask(port, "My cat is called Tom.", "kitchen-1"))
    second = run(ask(port, "What is my cat called?", "kitchen-1"))
    stranger = run(ask(port, "What is my cat called?", "bedroom-1"))

    types = [event.type for event in second.events]
    assert types[0] == HandledStart().event().type and types[-2:] == ["handled", "handled-stop"]
    assert types.count(HandledChunk(text="").event().type) >= 2
    assert second.streamed_text.strip() == second.handled.text
    assert second.handled.context == {"conversation_id": "kitchen-1"}
    assert "tom" in words(second.handled.text), (first.handled.text, second.handled.text)
    assert "tom" not in words(stranger.handled.text), stranger.handled.text
    # The server's side: the second turn's prompt held the first exchange, mostly from the KV cache.
    line = server.wait_for_line(r"conversation kitchen-1, turn 2:", mark)
    assert "1 earlier exchange in the prompt" in line, line
    cached, total = map(int, re.search(r"(\d+) of (\d+) prompt tokens cached", line).groups())
    assert cached > total / 2, line
    assert "0 earlier exchanges" in server.wait_for_line(r"conversation bedroom-1, turn 1:", mark)


def test_without_a_conversation_id_each_connection_is_a_conversation(server):
    port = server.ports["handle"]
    mark = len(server.lines())

    async def two_turns_on_one_connection():
        async with client(port) as peer:
            await ask_on(peer, "My cat is called Tom.", None)
            return await ask_on(peer, "What is my cat called?", None)

    same = run(two_turns_on_one_connection())
    other = run(ask(port, "What is my cat called?", None))

    assert same.handled.context is None
    turns = [line for line in server.lines()[mark:] if "conversation connection-" in line]
    assert [re.search(r"turn \d: \d earlier exchanges?", line).group(0) for line in turns] == [
        "turn 1: 0 earlier exchanges",
        "turn 2: 1 earlier exchange",
        "turn 1: 0 earlier exchanges",
    ], turns
    assert "tom" in words(same.handled.text) and "tom" not in words(other.handled.text)


def test_the_oldest_conversation_is_forgotten_first():
    from voicebot.config import config_from_dict
    from voicebot.wyoming.handle import Conversations

    conversations = Conversations(config_from_dict({}), size=2)
    first = conversations.get("a")
    first.conversation.add("My cat is called Tom.", "Tom is a cat.")
    conversations.get("b")
    assert conversations.get("a") is first  # Used again: now "b" is the oldest.
    conversations.get("c")

    assert len(conversations) == 2
    assert conversations.get("a") is first and conversations.get("a").conversation.exchanges
    assert not conversations.get("b").conversation.exchanges


# Bad peers. Each is refused or noticed in one log line naming it, and the server goes on serving.

CHUNK = AudioChunk(16000, 2, 1, bytes(3200)).event()


async def garbage_line(peer: RawPeer) -> list[Event]:
    await peer.send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary, not JSON\n")
    return await peer.events_until_closed()


async def random_bytes(peer: RawPeer) -> list[Event]:
    await peer.send(np.random.default_rng(9).integers(0, 256, 3000, np.uint8).tobytes().replace(b"\n", b" "))
    peer.writer.write_eof()
    return await peer.events_until_closed()


async def http_request(peer: RawPeer) -> list[Event]:
    await peer.send(b"GET / HTTP/1.1\r\nHost: voicebot\r\n\r\n")
    return await peer.events_until_closed()


async def nested_json(peer: RawPeer) -> list[Event]:
    await peer.send(b"[" * 60000 + b"\n")
    return await peer.events_until_closed()


async def huge_payload_claimed(peer: RawPeer) -> list[Event]:
    await peer.send(
        b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 4294967296}\n'
    )
    return await peer.events_until_closed()


async def huge_data_claimed(peer: RawPeer) -> list[Event]:
    await peer.send(b'{"type": "synthesize", "data_length": 2000000000}\n')
    return await peer.events_until_closed()


async def huge_header_line(peer: RawPeer) -> list[Event]:
    await peer.send(b'{"type": "transcript", "data": {"text": "' + b"a" * 200_000)
    return await peer.events_until_closed()


async def length_of_wrong_kind(peer: RawPeer) -> list[Event]:
    await peer.send(b'{"type": "audio-chunk", "payload_length": "lots"}\n')
    return await peer.events_until_closed()


async def leaves_mid_audio(peer: RawPeer) -> list[Event]:
    await peer.send(AudioStart(16000, 2, 1).event(), CHUNK, CHUNK, CHUNK)
    await asyncio.sleep(0.2)
    await peer.close()
    return []


async def leaves_mid_event(peer: RawPeer) -> list[Event]:
    await peer.send(
        AudioStart(16000, 2, 1).event(),
        b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 3200}\n',
        bytes(100),
    )
    await asyncio.sleep(0.2)
    await peer.close()
    return []


async def leaves_while_spoken_to(peer: RawPeer) -> list[Event]:
    await peer.send(Synthesize(text="This is a long answer. " * 20).event())
    assert AudioStart.is_type((await peer.next_event()).type)
    await peer.close()
    return []


async def leaves_while_answered(peer: RawPeer) -> list[Event]:
    await peer.send(Transcript(text="Tell me a long story about a cat.", context={"conversation_id": "gone"}).event())
    assert HandledStart.is_type((await peer.next_event()).type)
    await peer.close()
    return []


async def audio_too_long_then_a_question(peer: RawPeer) -> list[Event]:
    """Audio over wyoming.max_audio_s is refused, and the same connection then transcribes a short one."""
    too_long = bytes(2 * 16000 * (MAX_AUDIO_S + 1))
    await peer.send(*audio_events(too_long, 16000, 2, 1))
    refusal = await peer.next_event()
    await peer.send(*audio_events(bytes(16000), 16000, 2, 1))
    answer = await peer.next_event()
    await peer.close()
    return [refusal, answer]


async def bad_audio_format(peer: RawPeer) -> list[Event]:
    await peer.send(*audio_events(bytes(6000), 16000, 2, 6))
    refusal = await peer.next_event()
    await peer.close()
    return [refusal]


BAD_PEERS = [
    pytest.param(
        "asr", garbage_line, "refused: not a Wyoming event: its header is not JSON", "invalid-event", id="asr-garbage"
    ),
    pytest.param(
        "tts", garbage_line, "refused: not a Wyoming event: its header is not JSON", "invalid-event", id="tts-garbage"
    ),
    pytest.param(
        "handle",
        garbage_line,
        "refused: not a Wyoming event: its header is not JSON",
        "invalid-event",
        id="handle-garbage",
    ),
    pytest.param("asr", random_bytes, "refused: not a Wyoming event", "invalid-event", id="asr-random-bytes"),
    # Bytes left unread when the server closes make the kernel reset the connection: the error event may be lost.
    pytest.param("tts", http_request, "refused: not a Wyoming event", None, id="tts-http-request"),
    pytest.param(
        "handle",
        nested_json,
        "refused: not a Wyoming event: its header is not JSON",
        "invalid-event",
        id="handle-nested-json",
    ),
    pytest.param(
        "asr",
        huge_payload_claimed,
        "payload_length 4294967296 bytes, over the cap",
        "event-too-large",
        id="asr-4GB-payload",
    ),
    pytest.param(
        "tts", huge_data_claimed, "data_length 2000000000 bytes, over the cap", "event-too-large", id="tts-2GB-data"
    ),
    pytest.param("handle", huge_header_line, "an event header longer than 64 KiB", None, id="handle-200KB-header"),
    pytest.param(
        "asr", length_of_wrong_kind, "payload_length is not a byte count", "invalid-event", id="asr-length-not-a-number"
    ),
    pytest.param(
        "asr", leaves_mid_audio, r"left during an audio stream \(0\.3 s received\)", None, id="asr-leaves-mid-audio"
    ),
    pytest.param(
        "asr",
        leaves_mid_event,
        "left in the middle of an audio-chunk event, during an audio stream",
        None,
        id="asr-leaves-mid-event",
    ),
    pytest.param("tts", leaves_while_spoken_to, "left before the answer was sent", None, id="tts-leaves-mid-speech"),
    pytest.param(
        "handle",
        leaves_while_answered,
        "left before the answer was sent, during an answer in conversation gone",
        None,
        id="handle-leaves-mid-answer",
    ),
    pytest.param(
        "asr",
        audio_too_long_then_a_question,
        rf"audio longer than {MAX_AUDIO_S} s",
        "audio-too-long",
        id="asr-audio-too-long",
    ),
    pytest.param("asr", bad_audio_format, "audio with 6 channels", "bad-audio", id="asr-6-channels"),
]


@pytest.mark.parametrize("service, behaviour, logged, code", BAD_PEERS)
def test_a_bad_peer_is_refused_in_one_line_and_the_server_goes_on(server, service, behaviour, logged, code):
    port = server.ports[service]
    mark = len(server.lines())

    async def scenario():
        peer = await RawPeer.connect(port)
        events = await behaviour(peer)
        return peer.local_port, events

    local_port, events = run(scenario())

    if code is not None:
        errors = [Error.from_event(e) for e in events if Error.is_type(e.type)]
        assert [error.code for error in errors] == [code], events
    line = server.wait_for_line(logged, mark)
    about_peer = [line for line in server.lines()[mark:] if f"127.0.0.1:{local_port}" in line]
    refusals = [line for line in about_peer if not re.search(r"s of audio \(.*\) transcribed in", line)]
    assert refusals == [line], about_peer
    assert len(line) < 400, line
    # The same server still answers a well-behaved peer.
    assert run(describe(port)) is not None
    if behaviour is audio_too_long_then_a_question:
        assert Transcript.is_type(events[1].type), events
    assert "Traceback" not in server.log()


def test_connections_over_the_cap_are_refused_until_one_closes(server):
    from voicebot.wyoming.peer import MAX_CONNECTIONS

    port = server.ports["asr"]
    mark = len(server.lines())

    async def scenario():
        held = [await RawPeer.connect(port) for _ in range(MAX_CONNECTIONS)]
        for peer in held:  # Each is being served once it has answered.
            await peer.send(Describe().event())
            assert Info.is_type((await peer.next_event()).type)
        extra = await RawPeer.connect(port)
        refused = await extra.events_until_closed()
        await held[0].close()
        await asyncio.sleep(0.2)
        info = await describe(port)
        for peer in held[1:]:
            await peer.close()
        return extra.local_port, refused, info

    local_port, refused, info = run(scenario())

    assert [Error.from_event(event).code for event in refused] == ["busy"], refused
    assert info.asr
    lines = [line for line in server.lines()[mark:] if "connections are already open" in line]
    assert lines == [
        f"WARNING voicebot.wyoming.peer: wyoming asr: 127.0.0.1:{local_port} refused: 16 connections are already open"
    ]


# Start-up, announcement and stop.


def test_a_port_in_use_is_one_line_before_any_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "voicebot",
                "wyoming",
                "--set",
                "profile=bundled",
                "--set",
                f"wyoming.tts_port={port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    assert result.returncode == 70, result
    assert result.stderr.strip().splitlines() == [
        f"voicebot: cannot listen on tcp://127.0.0.1:{port} (wyoming.tts_port): Address already in use; "
        "set wyoming.host and wyoming.tts_port"
    ], result.stderr
    assert time.monotonic() - started < 15  # Found before the models load.


def test_two_servers_on_one_port_is_a_config_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "wyoming", "--set", "wyoming.asr_port=10200"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )

    assert result.returncode == 78, result
    assert "wyoming.asr_port and wyoming.tts_port are both 10200" in result.stderr


class Browser:
    """Every _wyoming._tcp service seen on the network, and when each was added or removed."""

    def __init__(self) -> None:
        from zeroconf import ServiceBrowser, Zeroconf

        self.zeroconf = Zeroconf()
        self.changes: list[tuple[str, str]] = []
        self._browser = ServiceBrowser(self.zeroconf, SERVICE_TYPE, handlers=[self._on_change])

    def _on_change(self, zeroconf, service_type, name, state_change) -> None:
        self.changes.append((name, state_change.name))

    def wait_for(self, change: str, names: set[str], timeout_s: float) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = {name for name, state in self.changes if state == change} & names
            if seen == names:
                return seen
            time.sleep(0.1)
        return {name for name, state in self.changes if state == change} & names

    def ports(self) -> dict[str, int]:
        found = {}
        for name in {name for name, state in self.changes if state == "Added"}:
            info = self.zeroconf.get_service_info(SERVICE_TYPE, name, timeout=3000)
            if info is not None:
                found[name] = (info.port, info.parsed_addresses())
        return found

    def close(self) -> None:
        self.zeroconf.close()


def test_announced_off_loopback_and_not_on_it(server, tmp_path):
    from voicebot.wyoming.announce import service_name

    names = {service_name(name) for name in ("asr", "tts", "handle")}
    browser = Browser()
    loopback = WyomingProcess(tmp_path / "loopback.log")
    try:
        assert browser.wait_for("Added", names, timeout_s=10) == names, browser.changes
        announced = browser.ports()
        assert {name: port for name, (port, _) in announced.items()} == {
            service_name(name): port for name, port in server.ports.items()
        }
        for _, addresses in announced.values():
            assert addresses and not any(address.startswith("127.") for address in addresses), announced
        loopback.wait_ready()
        time.sleep(3)  # Long enough for a registration's probes and first announcement.
        loopback_ports = set(loopback.ports.values())
        assert not loopback_ports & {port for port, _ in browser.ports().values()}, browser.changes
        assert "not announced with zeroconf: wyoming.host 127.0.0.1 is loopback" in loopback.log()
    finally:
        code = loopback.stop()
        browser.close()
    assert code == 0, loopback.log()
    assert "Traceback" not in loopback.log()


def test_sigterm_stops_cleanly_and_withdraws_the_announcement(server):
    from voicebot.wyoming.announce import service_name

    names = {service_name(name) for name in ("asr", "tts", "handle")}
    browser = Browser()
    try:
        assert browser.wait_for("Added", names, timeout_s=10) == names
        started = time.monotonic()
        code = server.stop()
        stopped_s = time.monotonic() - started
        assert browser.wait_for("Removed", names, timeout_s=10) == names, browser.changes
    finally:
        browser.close()
    assert code == 0, server.log()
    assert stopped_s < 10
    assert "withdrew the zeroconf announcements" in server.log()
    assert "Traceback" not in server.log()
