"""Echo: the assistant's own voice heard back through the microphone, simulated and cancelled.

`RoomEcho` plays the part of a speaker and a room in file mode (`voicebot run --echo GAIN[,DELAY_MS]`).
`EchoCanceller` removes the reply from the microphone using the reply itself as the far-end reference,
so the wake word detector hears the person and not the assistant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import weakref

import numpy as np

from voicebot.audio import INPUT_RATE_HZ
from voicebot.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ECHO_DELAY_MS = 30.0
MAX_ECHO_GAIN = 2.0
MAX_ECHO_DELAY_MS = 1000.0
# A speaker a hand's width from the microphone in a small furnished room: the direct sound dominates,
# and the reflections die away within about 150 ms.
REVERB_RT60_MS = 150.0
REVERB_TAIL_MS = 100.0
DIRECT_TO_REVERB_DB = 10.0
ECHO_CANCELLERS = ("webrtc", "speex", "none")
SPEEX_FILTER_MS = 200.0  # The echo path it can model: the speaker's delay plus the room's tail.
# Speex's own defaults (-40 dB, and -15 dB while the person talks) let the reply's own wake word through
# even with an exact reference (4 and 6 of 32 runs); these let none through, and hear the person as well.
SPEEX_ECHO_SUPPRESS_DB = -80
SPEEX_ECHO_SUPPRESS_ACTIVE_DB = -50
# Speex cancels nothing of an echo that arrives less than a block (10 ms) after its reference, and a
# reference rendered from estimated device latencies can be that close, or a little late. Holding the
# microphone back this long keeps the echo behind the reference; it costs the wake word and the VAD as much.
SPEEX_MIC_DELAY_MS = 20.0


def parse_echo_option(text: str) -> tuple[float, float]:
    """`GAIN[,DELAY_MS]` as (gain, delay_ms); a ValueError with a one-line reason if it is not one."""
    usage = (
        f"--echo expects GAIN[,DELAY_MS] such as 0.5,30 "
        f"(gain above 0 up to {MAX_ECHO_GAIN:g}, delay 0 to {MAX_ECHO_DELAY_MS:g} ms)"
    )
    parts = text.split(",")
    if len(parts) > 2:
        raise ValueError(f"{usage}; got {text!r}")
    try:
        gain = float(parts[0])
        delay_ms = float(parts[1]) if len(parts) == 2 else DEFAULT_ECHO_DELAY_MS
    except ValueError:
        raise ValueError(f"{usage}; got {text!r}") from None
    if not (math.isfinite(gain) and 0.0 < gain <= MAX_ECHO_GAIN):
        raise ValueError(f"{usage}; the gain {parts[0].strip()!r} is out of range")
    if not (math.isfinite(delay_ms) and 0.0 <= delay_ms <= MAX_ECHO_DELAY_MS):
        raise ValueError(f"{usage}; the delay {parts[1].strip()!r} is out of range")
    return gain, delay_ms


def room_impulse_response(gain: float, delay_ms: float, rate_hz: int = INPUT_RATE_HZ) -> np.ndarray:
    """A speaker heard across a small room: the direct sound after delay_ms, then a short decaying tail."""
    delay = round(delay_ms * rate_hz / 1000)
    tail_s = np.arange(1, round(REVERB_TAIL_MS * rate_hz / 1000) + 1) / rate_hz
    # A fixed seed keeps every run, and so every measurement, in the same room.
    reflections = np.random.default_rng(20240601).standard_normal(len(tail_s))
    reflections *= 10 ** (-3 * tail_s / (REVERB_RT60_MS / 1000))  # -60 dB after RT60.
    reflections *= 10 ** (-DIRECT_TO_REVERB_DB / 20) / np.sqrt(np.sum(reflections**2))
    response = np.zeros(delay + 1 + len(tail_s), np.float64)
    response[delay] = 1.0
    response[delay + 1 :] = reflections
    return (gain * response).astype(np.float32)


class RoomEcho:
    """What the microphone hears of the speaker: the played audio delayed, scaled and with a little reverb."""

    def __init__(self, gain: float, delay_ms: float, rate_hz: int = INPUT_RATE_HZ) -> None:
        self.gain = gain
        self.delay_ms = delay_ms
        self.rate_hz = rate_hz
        self._response = room_impulse_response(gain, delay_ms, rate_hz)
        # The last len(response) - 1 played samples: the part of the past still ringing in the room.
        self._history = np.zeros(len(self._response) - 1, np.float32)

    def apply(self, played: np.ndarray) -> np.ndarray:
        """The echo of `played` (the audio the speaker played during one frame) that reaches the microphone now."""
        played = np.asarray(played, np.float32)
        signal = np.concatenate([self._history, played])
        self._history = signal[len(signal) - len(self._history) :]
        return np.convolve(signal, self._response, mode="valid").astype(np.float32)

    def reset(self) -> None:
        """A silent room."""
        self._history[:] = 0.0


class EchoCanceller:
    """Removes the reply, heard back through the microphone, from microphone audio; this base passes it through.

    `process` takes one microphone frame and its reference: the reply audio that reached the speaker
    during the same frame, zeros when nothing played. Both are float32 at 16 kHz, of the same length,
    a whole number of 10 ms blocks. State carries over from frame to frame, so the references of
    consecutive frames must join up sample for sample: a reference that jumps back and forth by a
    millisecond from frame to frame defeats any canceller (docs/echo.md). A constant delay between the
    reference and the echo, up to about 100 ms, is learned.
    """

    kind = "none"
    block_samples = INPUT_RATE_HZ // 100

    def process(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The microphone frame with the echo of `reference` removed."""
        mic = np.asarray(mic, np.float32)
        reference = np.asarray(reference, np.float32)
        if len(mic) != len(reference) or len(mic) % self.block_samples:
            raise ValueError(
                f"echo canceller: the microphone frame ({len(mic)} samples) and its reference ({len(reference)}) "
                f"must have the same length, a multiple of {self.block_samples}"
            )
        return self._cancel(mic, reference)

    def _cancel(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return mic


class WebRtcEchoCanceller(EchoCanceller):
    """WebRTC's AEC3 (from pywebrtc-audio): a linear filter, a delay estimator and a residual echo suppressor."""

    kind = "webrtc"

    def __init__(self) -> None:
        try:
            from pywebrtc_audio import EchoCanceller as Aec3
        except ImportError:
            raise ConfigError(
                "audio.echo_canceller: 'webrtc' needs the pywebrtc-audio package; "
                "install it with: pip install pywebrtc-audio, or choose speex or none"
            ) from None
        # A stream delay of 0 leaves the delay to AEC3's own estimator, which also follows it when it changes.
        # AEC3 runs in the calling thread (it has no thread count to set) and splits frames into 10 ms itself.
        self._aec = Aec3(sample_rate=INPUT_RATE_HZ, num_channels=1, stream_delay_ms=0)

    def _cancel(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return self._aec.process(mic, reference)


# From speex/speex_echo.h and speex/speex_preprocess.h.
_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24


def load_speexdsp(name: str = "speexdsp") -> ctypes.CDLL:
    """libspeexdsp through ctypes, or a one-line error that says how to install it."""
    try:
        lib = ctypes.CDLL(f"lib{name}.so.1")  # Debian's and Raspberry Pi OS's name, found without a subprocess.
    except OSError:
        lib = None
    try:
        lib = lib or ctypes.CDLL(ctypes.util.find_library(name) or f"lib{name}")
    except OSError:
        raise ConfigError(
            f"audio.echo_canceller: 'speex' needs the lib{name} library; "
            f"install it with: sudo apt-get install lib{name}1, or choose webrtc or none"
        ) from None
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
    lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


class SpeexEchoCanceller(EchoCanceller):
    """Speex's echo canceller from libspeexdsp, paired with its preprocessor as PulseAudio's `aec_method=speex` does.

    An adaptive filter removes the linear echo; the preprocessor then suppresses what the filter leaves,
    from the filter's own estimate of that residual, and leaves the bands where the person is louder.
    The library is called through ctypes: the `speexdsp` package on PyPI wraps only the filter, which
    alone let the reply wake the assistant (docs/echo.md).
    """

    kind = "speex"

    def __init__(
        self,
        filter_ms: float = SPEEX_FILTER_MS,
        echo_suppress_db: int = SPEEX_ECHO_SUPPRESS_DB,
        echo_suppress_active_db: int = SPEEX_ECHO_SUPPRESS_ACTIVE_DB,
        mic_delay_ms: float = SPEEX_MIC_DELAY_MS,
        library: str = "speexdsp",
    ) -> None:
        lib = load_speexdsp(library)
        echo = lib.speex_echo_state_init(self.block_samples, round(filter_ms * INPUT_RATE_HZ / 1000))
        preprocess = lib.speex_preprocess_state_init(self.block_samples, INPUT_RATE_HZ)
        # Freed with the object; speex has no threads of its own, so there is no thread count to set.
        weakref.finalize(self, _free_speex, lib, echo, preprocess)
        self._lib, self._echo, self._preprocess = lib, echo, preprocess
        lib.speex_echo_ctl(echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(ctypes.c_int(INPUT_RATE_HZ)))
        # The preprocessor applies its residual echo suppression only as part of denoising.
        for request, value in (
            (_SPEEX_PREPROCESS_SET_DENOISE, 1),
            (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, echo_suppress_db),
            (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, echo_suppress_active_db),
        ):
            lib.speex_preprocess_ctl(preprocess, request, ctypes.byref(ctypes.c_int(value)))
        lib.speex_preprocess_ctl(preprocess, _SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(echo))
        self._out = np.zeros(self.block_samples, np.int16)
        self._held_mic = np.zeros(round(mic_delay_ms * INPUT_RATE_HZ / 1000), np.float32)

    def _cancel(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if len(self._held_mic):
            mic = np.concatenate([self._held_mic, mic])
            mic, self._held_mic = mic[: len(reference)], mic[len(reference) :]
        mic_pcm, reference_pcm = _pcm16(mic), _pcm16(reference)
        cleaned = np.empty_like(mic_pcm)
        out = self._out
        for start in range(0, len(mic_pcm), self.block_samples):
            block = slice(start, start + self.block_samples)
            self._lib.speex_echo_cancellation(
                self._echo, mic_pcm[block].ctypes.data, reference_pcm[block].ctypes.data, out.ctypes.data
            )
            self._lib.speex_preprocess_run(self._preprocess, out.ctypes.data)
            cleaned[block] = out
        return cleaned.astype(np.float32) / 32768.0


def _free_speex(lib: ctypes.CDLL, echo: int, preprocess: int) -> None:
    lib.speex_preprocess_state_destroy(preprocess)
    lib.speex_echo_state_destroy(echo)


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(samples * 32768.0, -32768, 32767).astype(np.int16))


def make_echo_canceller(kind: str) -> EchoCanceller:
    """The echo canceller named by audio.echo_canceller: webrtc, speex or none."""
    makers = {"webrtc": WebRtcEchoCanceller, "speex": SpeexEchoCanceller, "none": EchoCanceller}
    if kind not in makers:
        raise ConfigError(f"audio.echo_canceller: unknown canceller {kind!r}; use one of {', '.join(ECHO_CANCELLERS)}")
    canceller = makers[kind]()
    log.info("echo canceller: %s", kind)
    return canceller
