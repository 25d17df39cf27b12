"""The config loader and the default config file, config/voicebot.yaml."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from voicebot import config as config_module
from voicebot.config import DEFAULT_SYSTEM_PROMPT, Config, config_from_dict, config_keys, load_config
from voicebot.errors import EX_CONFIG, ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config" / "voicebot.yaml"
CONFIG_SOURCE = REPO / "voicebot" / "config.py"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No test sees the machine's own config: no $VOICEBOT_CONFIG, no /etc or ~ files."""
    monkeypatch.delenv("VOICEBOT_CONFIG", raising=False)
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", ())


def write(tmp_path: Path, text: str, name: str = "voicebot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args, **kwargs) -> str:
    """The message of the ConfigError that load_config raises; it must be one line."""
    with pytest.raises(ConfigError) as caught:
        load_config(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip() == message and message, message
    return message


# --- The default file -----------------------------------------------------------------


def key_nodes(node: yaml.Node, prefix: str = ""):
    """(key path, key node) for every key in a composed YAML mapping, depth first."""
    for key_node, value_node in node.value:
        path = f"{prefix}{key_node.value}"
        yield path, key_node
        if isinstance(value_node, yaml.MappingNode):
            yield from key_nodes(value_node, f"{path}.")


def comment_above(lines: list[str], index: int) -> str:
    """The comment lines directly above line `index`, joined into one sentence."""
    block = []
    index -= 1
    while index >= 0 and lines[index].lstrip().startswith("#"):
        block.insert(0, lines[index].lstrip()[1:].strip())
        index -= 1
    return " ".join(block)


def docstrings() -> dict[str, str]:
    """Class docstrings by class name, and field docstrings by (class name, field)."""
    found: dict = {}
    for node in ast.parse(CONFIG_SOURCE.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ClassDef):
            continue
        found[node.name] = ast.get_docstring(node)
        for before, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(before, ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                found[(node.name, before.target.id)] = " ".join(after.value.value.split())
    return found


def section_classes() -> dict[str, str]:
    """Section name -> the name of its dataclass, e.g. 'vad' -> 'VadConfig'."""
    return {
        name: hint.__name__ for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)
    }


def test_default_file_loads_to_exactly_the_defaults():
    loaded = load_config(CONFIG_FILE)
    assert loaded == config_from_dict({})
    assert loaded.llm.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert loaded.wake.models == ("hey_jarvis",)
    assert loaded.source == str(CONFIG_FILE)


def test_default_file_lists_every_key_in_declaration_order():
    data = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    assert next(iter(data)) == "profile"
    keys = [
        f"{section}.{key}" if isinstance(value, dict) else section
        for section, value in data.items()
        for key in (value if isinstance(value, dict) else [None])
    ]
    assert keys == config_keys()


def test_every_key_in_the_file_has_a_comment_right_above_it():
    text = CONFIG_FILE.read_text(encoding="utf-8")
    lines = text.splitlines()
    uncommented = [
        f"{path} (line {node.start_mark.line + 1})"
        for path, node in key_nodes(yaml.compose(text))
        if not lines[node.start_mark.line - 1].lstrip().startswith("#")
    ]
    assert uncommented == []


def test_key_comments_say_what_the_docstrings_say():
    text = CONFIG_FILE.read_text(encoding="utf-8")
    lines = text.splitlines()
    docs = docstrings()
    classes = section_classes()
    wrong = {}
    for path, node in key_nodes(yaml.compose(text)):
        comment = comment_above(lines, node.start_mark.line)
        if "." in path:
            section, key = path.split(".")
            expected = docs[(classes[section], key)]
            if comment != expected:
                wrong[path] = (comment, expected)
        elif path in classes:  # a section header names the section and quotes its class docstring
            if docs[classes[path]].lower() not in comment.lower():
                wrong[path] = (comment, docs[classes[path]])
        elif comment != docs[("Config", path)]:
            wrong[path] = (comment, docs[("Config", path)])
    assert wrong == {}


def test_file_header_says_how_the_file_is_found_and_overridden():
    header = CONFIG_FILE.read_text(encoding="utf-8").split("\nprofile:")[0]
    for fragment in (
        "--config PATH",
        "$VOICEBOT_CONFIG",
        "/etc/voicebot/voicebot.yaml",
        "~/.config/voicebot/voicebot.yaml",
        "--set section.key=value",
        "parsed as YAML",
    ):
        assert fragment in header


# --- Errors in a file -----------------------------------------------------------------

# (file text, line of the offending key, fragments the one-line message must contain)
BAD_VALUES = {
    "unknown key, close": (
        "vad:\n  hangover: 0.8\n",
        2,
        ["vad.hangover: unknown key in section 'vad'", "did you mean 'vad.hangover_s'?"],
    ),
    "unknown top-level key, close": (
        "profil: pi\n",
        1,
        ["profil: unknown key in the top level", "did you mean 'profile'?"],
    ),
    "unknown key, nothing close": (
        "vad:\n  threshold: 0.5\n  xyz: 1\n",
        3,
        [
            "vad.xyz: unknown key",
            "allowed keys: threshold, hangover_s, early_start_s, max_utterance_s, no_speech_timeout_s",
        ],
    ),
    "unknown section": (
        "profile: pi\nnetwork:\n  port: 80\n",
        2,
        ["network: unknown key in the top level", "allowed keys: profile, audio, wake, vad, asr, llm"],
    ),
    "internal field is not a key": (
        "source: mine\n",
        1,
        ["source: unknown key in the top level", "allowed keys:"],
    ),
    "text for a number": (
        "vad:\n  threshold: high\n",
        2,
        ["vad.threshold: got 'high'", "expected a number from 0.05 to 0.95"],
    ),
    "bool for an int": (
        "llm:\n  context_tokens: true\n",
        2,
        ["llm.context_tokens: got True", "expected a whole number from 256 to 32768"],
    ),
    "fraction for an int": (
        "asr:\n  beam_size: 2.5\n",
        2,
        ["asr.beam_size: got 2.5", "expected a whole number from 1 to 10"],
    ),
    "number for a list": (
        "wake:\n  models: 3\n",
        2,
        ["wake.models: got 3", "expected a non-empty list, each item text"],
    ),
    "list item of the wrong type": (
        "llm:\n  seed: 1\n  cores: [1, two]\n",
        3,
        ["llm.cores: got [1, 'two']", "expected 'auto' or a non-empty list, each item a whole number"],
    ),
    "cores neither auto nor a list": (
        "tts:\n  cores: all\n",
        2,
        ["tts.cores: got 'all'", "expected 'auto' or a non-empty list"],
    ),
    "too low": (
        "vad:\n  hangover_s: 0.05\n",
        2,
        ["vad.hangover_s: got 0.05", "expected a number from 0.1 to 5"],
    ),
    "too high": (
        "tts:\n  volume: 1.5\n",
        2,
        ["tts.volume: got 1.5", "expected a number from 0 to 1"],
    ),
    "int too high": (
        "llm:\n  top_k: 1001\n",
        2,
        ["llm.top_k: got 1001", "expected a whole number from 0 to 1000"],
    ),
    "bad language": (
        "asr:\n  language: fr\n",
        2,
        ["asr.language: got 'fr'", "expected one of 'en', 'zh', 'auto'"],
    ),
    "bad profile": (
        "profile: laptop\n",
        1,
        ["profile: got 'laptop'", "expected one of 'pi', 'bundled'"],
    ),
    "multi-line text stays on one line": (
        'profile: "lap\\ntop"\n',
        1,
        ["profile: got 'lap\\ntop'", "expected one of 'pi', 'bundled'"],
    ),
    "empty list": (
        "wake:\n  models: []\n",
        2,
        ["wake.models: got []", "expected a non-empty list"],
    ),
    "empty text": (
        "models:\n  dir: ''\n",
        2,
        ["models.dir: got ''", "expected text"],
    ),
    "bool for a device": (
        "audio:\n  input_device: true\n",
        2,
        ["audio.input_device: got True", "expected null or a whole number or text"],
    ),
    "section that is not a mapping": (
        "profile: pi\nvad: 3\n",
        2,
        ["vad: expected a section of keys, got int 3"],
    ),
}


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_key_or_value_in_the_file_is_a_one_line_error_with_its_line(tmp_path, text, line, fragments):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"config error in {path}, line {line}: ")
    for fragment in fragments:
        assert fragment in message


BAD_FILES = {
    "top level is a list": ("- vad\n- asr\n", "the file must be a mapping of sections, not a list"),
    "top level is text": ("just some words\n", "the file must be a mapping of sections, not text"),
    "bad YAML, unclosed list": (
        "vad:\n  threshold: [0.5\n",
        "line 3, column 1: invalid YAML: expected ',' or ']'",
    ),
    "bad YAML, two colons": (
        "profile: pi: bundled\n",
        "line 1, column 12: invalid YAML: mapping values are not allowed",
    ),
    "bad YAML, tab indent": ("vad:\n\thangover_s: 1\n", "line 2, column 1: invalid YAML: found character '\\t'"),
}


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_file_that_is_not_a_mapping_of_sections_is_a_one_line_error(tmp_path, text, fragment):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"config error in {path}")
    assert fragment in message


def test_a_missing_file_given_by_path_is_an_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    message = config_error(missing)
    assert message == (f"config file {missing} does not exist; copy config/voicebot.yaml there or pass --config PATH")


def test_a_file_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("llm:\n  system_prompt: Réponds en français\n".encode("latin-1"))
    message = config_error(path)
    assert message == f"config file {path} is not UTF-8 text; save it as UTF-8"


def test_an_empty_file_means_the_defaults(tmp_path):
    path = write(tmp_path, "# everything commented out\n")
    assert load_config(path) == config_from_dict({})


# --- --set overrides ------------------------------------------------------------------

BASE_FILE = "vad:\n  hangover_s: 1.5\nllm:\n  seed: 42\n"

# (override, the value it sets, what that value must be)
OVERRIDES = [
    ("vad.hangover_s=0.8", lambda c: c.vad.hangover_s, 0.8),
    ("wake.models=[alexa, /x/y.onnx]", lambda c: c.wake.models, ("alexa", "/x/y.onnx")),
    ("llm.seed=null", lambda c: c.llm.seed, None),
    ("llm.seed=7", lambda c: c.llm.seed, 7),
    ("llm.cores=[1, 2]", lambda c: c.llm.cores, (1, 2)),
    ("asr.language=zh", lambda c: c.asr.language, "zh"),
    ("profile=bundled", lambda c: c.profile, "bundled"),
    ("audio.input_device=2", lambda c: c.audio.input_device, 2),
    ("audio.input_device=USB Audio", lambda c: c.audio.input_device, "USB Audio"),
    ("llm.system_prompt=Be brief.", lambda c: c.llm.system_prompt, "Be brief."),
    ("llm.system_prompt='Be brief: one line.'", lambda c: c.llm.system_prompt, "Be brief: one line."),
]


@pytest.mark.parametrize(("override", "get", "expected"), OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_set_parses_the_value_as_yaml_and_wins_over_the_file(tmp_path, override, get, expected):
    config = load_config(write(tmp_path, BASE_FILE), overrides=[override])
    assert get(config) == expected
    assert type(get(config)) is type(expected)


def test_set_is_repeatable_and_the_last_one_wins(tmp_path):
    config = load_config(
        write(tmp_path, BASE_FILE),
        overrides=["vad.hangover_s=0.8", "tts.volume=0.5", "vad.hangover_s=0.9"],
    )
    assert (config.vad.hangover_s, config.tts.volume, config.llm.seed) == (0.9, 0.5, 42)


def test_set_works_without_a_file():
    config = load_config(overrides=["tts.cores=[0]"])
    assert config == dataclasses.replace(config_from_dict({}), tts=dataclasses.replace(Config().tts, cores=(0,)))
    assert config.source == "built-in defaults"


BAD_OVERRIDES = {
    "bad value": ("vad.hangover_s=fast", ["vad.hangover_s: got 'fast'", "expected a number from 0.1 to 5"]),
    "out of range, key also in the file": ("vad.hangover_s=99", ["vad.hangover_s: got 99", "from 0.1 to 5"]),
    "unknown key": ("vad.hangover=0.8", ["vad.hangover: unknown key", "did you mean 'vad.hangover_s'?"]),
    "empty list": ("wake.models=[]", ["wake.models: got []", "a non-empty list"]),
    "bad list item": ("llm.cores=[0, x]", ["llm.cores: got [0, 'x']", "each item a whole number"]),
    "unquoted text with ': ' is a mapping": (
        "llm.system_prompt=Be brief: one line.",
        ["llm.system_prompt: got {'Be brief': 'one line.'}", "expected text"],
    ),
}


@pytest.mark.parametrize(("override", "fragments"), BAD_OVERRIDES.values(), ids=BAD_OVERRIDES.keys())
def test_a_bad_override_names_set_not_the_file(tmp_path, override, fragments):
    path = write(tmp_path, BASE_FILE)
    message = config_error(path, overrides=[override])
    assert message.startswith("config error in --set: ")
    assert str(path) not in message
    for fragment in fragments:
        assert fragment in message


MALFORMED_OVERRIDES = {
    "no equals sign": ("novalue", "--set 'novalue': expected section.key=value"),
    "no key": ("=3", "--set '=3': expected section.key=value"),
    "value is bad YAML": ("vad.hangover_s=[0.8", "the value is not valid YAML; quote it if it is text"),
    "key under a plain value": ("profile.x=1", "--set profile.x: profile is not a section"),
}


@pytest.mark.parametrize(("override", "fragment"), MALFORMED_OVERRIDES.values(), ids=MALFORMED_OVERRIDES.keys())
def test_a_malformed_override_is_a_one_line_error(tmp_path, override, fragment):
    assert fragment in config_error(write(tmp_path, "profile: pi\n"), overrides=[override])


# --- Where the file comes from ----------------------------------------------------------


def test_voicebot_config_env_var_is_used_when_no_path_is_given(tmp_path, monkeypatch):
    path = write(tmp_path, "vad:\n  hangover_s: 0.9\n")
    monkeypatch.setenv("VOICEBOT_CONFIG", str(path))
    config = load_config()
    assert config.vad.hangover_s == 0.9
    assert config.source == str(path)


def test_a_path_given_beats_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEBOT_CONFIG", str(write(tmp_path, "vad:\n  hangover_s: 0.9\n", "env.yaml")))
    config = load_config(write(tmp_path, "vad:\n  hangover_s: 1.2\n", "given.yaml"))
    assert config.vad.hangover_s == 1.2


def test_env_var_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "gone.yaml"
    monkeypatch.setenv("VOICEBOT_CONFIG", str(missing))
    assert f"config file {missing} does not exist" in config_error()


def test_default_places_are_searched_in_order_when_nothing_is_given(tmp_path, monkeypatch):
    first, second = tmp_path / "etc.yaml", write(tmp_path, "profile: bundled\n", "home.yaml")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", (first, second))
    assert load_config().profile == "bundled"
    write(tmp_path, "profile: pi\n", "etc.yaml")
    assert load_config().source == str(first)


def test_no_file_anywhere_means_the_built_in_defaults():
    config = load_config()
    assert config == config_from_dict({})
    assert config.source == "built-in defaults"


# --- Regressions: bugs found and fixed in config.py ---


def test_nan_is_out_of_range(tmp_path):
    assert "vad.hangover_s: got nan" in config_error(write(tmp_path, "vad:\n  hangover_s: .nan\n"))


def test_set_into_an_empty_section_of_the_file(tmp_path):
    assert load_config(write(tmp_path, "vad:\n  # all commented out\n"), ["vad.threshold=0.3"]).vad.threshold == 0.3


def test_large_limits_are_shown_exactly(tmp_path):
    assert "from 0 to 2147483647" in config_error(write(tmp_path, "llm:\n  seed: -1\n"))


def test_set_with_a_misspelt_section_names_set(tmp_path):
    message = config_error(write(tmp_path, "profile: pi\n"), ["vadd.threshold=0.3"])
    assert message.startswith("config error in --set: vadd: unknown key")


# --- The command line ---------------------------------------------------------------------

CLI_CASES = {
    "bad key": ("vad:\n  hangover: 0.8\n", ["vad.hangover", "did you mean 'vad.hangover_s'?", "line 2"]),
    "bad YAML": ("vad: [\n", ["invalid YAML", "line 2, column 1"]),
    "missing file": (None, ["does not exist"]),
}


@pytest.mark.parametrize(("text", "fragments"), CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_config_error_exits_78_with_one_line_on_stderr(tmp_path, text, fragments):
    bad_file = tmp_path / "bad.yaml"
    if text is not None:
        bad_file.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "VOICEBOT_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "run", "--config", str(bad_file)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad_file) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.returncode == EX_CONFIG == 78


@pytest.mark.parametrize(
    ("raw", "language"),
    [
        ({}, "auto"),
        ({"profile": "pi"}, "auto"),
        ({"profile": "bundled"}, "en"),
        ({"profile": "bundled", "asr": {"language": "zh"}}, "zh"),
        ({"profile": "pi", "asr": {"language": "en"}}, "en"),
    ],
)
def test_the_spoken_language_defaults_by_profile(raw, language):
    # pi has the multilingual Whisper, so it detects the language; bundled defaults to fast English-only tiny.en.
    assert config_from_dict(raw).asr.language == language


# --- Hostile files (issue 17) ----------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """The billion laughs under wake.models: each level a list of nine of the level below, in a few hundred bytes;
    each anchor is defined inside the first item of the next level, as in the bomb the issue found."""
    nested = "&a1 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"
    for level in range(2, levels + 1):
        nested = f"&a{level} [{nested}," + ",".join([f"*a{level - 1}"] * 8) + "]"
    return f"wake:\n  models: {nested}\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    import tracemalloc

    text = alias_bomb()
    assert len(text) < 400  # 364 bytes in the issue; written out, 9**9 values.
    path = write(tmp_path, text)

    tracemalloc.start()
    started = time.monotonic()
    try:
        message = config_error(path)
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert message.startswith(f"config error in {path}, line 2, column ")
    assert "invalid YAML: its aliases expand to more than 10000 values" in message, message
    assert len(message) < 300 and took < 2 and peak < 20_000_000, (len(message), took, peak)


def test_aliases_in_an_override_are_bounded_too(tmp_path):
    bomb = alias_bomb().split("models: ", 1)[1].strip()
    message = config_error(overrides=[f"wake.models={bomb}"])
    assert "its aliases expand to more than 10000 values" in message and len(message) < 400, message


def test_a_value_that_contains_itself_is_refused(tmp_path):
    message = config_error(write(tmp_path, "wake:\n  models: &loop [*loop]\n"))
    assert "an alias inside the value it names" in message, message


def test_a_long_bad_value_is_quoted_cut_short(tmp_path):
    long_text = config_error(write(tmp_path, "vad:\n  hangover_s: " + "x" * 100_000 + "\n"))
    many_items = config_error(write(tmp_path, "wake:\n  models: [" + ", ".join(["[1]"] * 20_000) + "]\n"))
    long_key = config_error(write(tmp_path, "vad:\n  ? " + "k" * 100_000 + "\n  : 1\n"))

    for message in (long_text, many_items, long_key):
        assert len(message) < 400 and "... (cut)" in message, message[:500]
    assert "vad.hangover_s: got 'xxxxxxxx" in long_text and "expected a number from 0.1 to 5" in long_text
    assert "wake.models: got [[1], [1]," in many_items


def test_a_number_too_long_to_read_is_a_one_line_error(tmp_path):
    message = config_error(write(tmp_path, "llm:\n  seed: " + "1" * 5000 + "\n"))
    assert "a number of more than 4300 digits" in message and len(message) < 200, message
