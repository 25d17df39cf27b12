"""Speech synthesis with Piper: one voice per language, text made safe for the voice first."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import Iterator

from voicebot.audio import AudioChunk
from voicebot.config import TtsConfig
from voicebot.errors import ModelLoadError

log = logging.getLogger(__name__)

CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Characters espeak would read out by name ("asterisk", "tilde") or that carry no speech.
UNSPOKEN = re.compile(r"[*_#~|<>\\^`{}\[\]=@]+")
LEADING_PUNCTUATION = re.compile(r"^[\s.,;:!?、，。；：！？]+")
FULLWIDTH_PUNCTUATION = str.maketrans({"，": ",", "。": ".", "！": "!", "？": "?", "；": ";", "：": ":", "、": ","})


def language_of(text: str) -> str:
    """'zh' when the text is mostly Chinese characters, else 'en'."""
    han = len(HAN.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return "zh" if han and han >= latin / 4 else "en"


def text_for_voice(text: str, voice_language: str) -> str:
    """What the voice should be given: no symbols it would spell out, no script it cannot read."""
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cf") else char for char in text)
    text = UNSPOKEN.sub(" ", text)
    if voice_language != "zh":
        # An English voice reads each Chinese character as "Chinese letter": say nothing instead.
        text = CJK.sub(" ", text.translate(FULLWIDTH_PUNCTUATION))
    text = LEADING_PUNCTUATION.sub("", re.sub(r"\s+", " ", text)).strip()
    return text if re.search(r"\w", text) else ""


class Synthesizer:
    """Piper voices for English and Chinese, with explicit ONNX Runtime thread counts."""

    def __init__(self, voices: dict[str, Path], config: TtsConfig, threads: int) -> None:
        self.config = config
        self._voices = {language: _load_voice(path, threads) for language, path in voices.items()}
        self._warned_missing: set[str] = set()
        if not self._voices:
            raise ModelLoadError("no Piper voice configured; set models.voice_en or models.voice_zh")

    @property
    def rate_hz(self) -> int:
        """Output rate of the first voice (all replies are resampled for the device anyway)."""
        return next(iter(self._voices.values())).config.sample_rate

    def synthesize(self, text: str) -> Iterator[AudioChunk]:
        """Audio for one piece of text, a chunk per sentence; nothing if the text has nothing to say."""
        from piper import SynthesisConfig

        language = language_of(text)
        if language not in self._voices:
            if language not in self._warned_missing:
                log.warning(
                    "no Piper voice for %s (models.voice_%s): its text is left out of replies", language, language
                )
                self._warned_missing.add(language)
            language = "en" if "en" in self._voices else next(iter(self._voices))
        spoken = text_for_voice(text, language)
        if not spoken:
            return
        syn_config = SynthesisConfig(length_scale=self.config.length_scale, volume=self.config.volume)
        for chunk in self._voices[language].synthesize(spoken, syn_config=syn_config):
            yield AudioChunk(chunk.audio_float_array, chunk.sample_rate)


def _load_voice(model_path: Path, threads: int):
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    config_path = Path(f"{model_path}.json")
    options = onnxruntime.SessionOptions()
    # Explicit counts: otherwise ONNX Runtime starts a thread per core and pins them, fighting the LLM.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise ModelLoadError(f"cannot load Piper voice {model_path}: {error}; fetch the voice again") from None
    return PiperVoice(session=session, config=config)
