"""`voicebot chat`: the text REPL on the real model, and memory that stays fast over a long conversation."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import wave
from pathlib import Path

from conftest import REPO

TOPICS = [
    "the ocean",
    "volcanoes",
    "the moon",
    "honey bees",
    "the Roman empire",
    "rainforests",
    "the human heart",
    "comets",
    "glaciers",
    "coffee",
    "the printing press",
    "electricity",
    "octopuses",
    "deserts",
    "the Great Wall of China",
    "thunderstorms",
    "penguins",
    "the piano",
    "bread baking",
    "bicycles",
    "the Nile",
    "earthquakes",
    "owls",
    "chess",
    "the Eiffel Tower",
]


def chat(
    tmp_path: Path, lines: list[str], *options: str, timeout: float = 600
) -> tuple[subprocess.CompletedProcess, list]:
    """`voicebot chat` with `lines` piped in; returns the process and its trace."""
    trace = tmp_path / "chat.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot",
            "chat",
            "--set",
            "profile=bundled",
            "--set",
            "llm.seed=1",
            *options,
            "--trace",
            str(trace),
        ],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=os.environ,
    )
    events = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()] if trace.exists() else []
    return result, events


def named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


def test_fifty_long_turns_in_a_small_context_stay_fast(tmp_path):
    questions = [f"Tell me everything you know about {topic}, in as much detail as you can." for topic in TOPICS * 2]

    result, events = chat(tmp_path, questions, "--set", "llm.context_tokens=512")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "voicebot:" not in result.stderr, result.stderr
    prompts = named(events, "llm_prompt")
    assert len(prompts) == 50
    assert [e["reason"] for e in named(events, "turn_end")] == ["answered"] * 50
    assert all(p["prompt_tokens"] <= 512 - 200 for p in prompts), [p["prompt_tokens"] for p in prompts]
    # The history outgrew the context many times over, and was compressed in blocks.
    compressions = named(events, "history_compressed")
    assert len(compressions) >= 5 and all(c["method"] == "summary" for c in compressions)
    early = statistics.median(p["prompt_tokens_evaluated"] for p in prompts[1:10])
    late = statistics.median(p["prompt_tokens_evaluated"] for p in prompts[40:50])
    print(f"prompt tokens evaluated: median {early} over turns 2-10, {late} over turns 41-50")
    assert late <= 1.5 * early, (early, late)
    # Most turns evaluate little more than the question: the rest comes from the KV cache.
    assert statistics.median(p["prompt_tokens_cached"] / p["prompt_tokens"] for p in prompts[1:]) > 0.6
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 50


def test_piped_questions_are_answered_in_order_and_it_exits_at_the_end(tmp_path):
    result, events = chat(tmp_path, ["What is the capital of France?", "", "   ", "And of Italy?"])

    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == 2 and all(any(c.isalpha() for c in answer) for answer in answers), answers
    assert [q["text"] for q in named(events, "question")] == ["What is the capital of France?", "And of Italy?"]
    prompts = named(events, "llm_prompt")
    assert [p["history_turns"] for p in prompts] == [0, 1]
    assert all(p["prompt_tokens_evaluated"] > 0 for p in prompts)


def test_a_chinese_question_gets_the_chinese_system_prompt(tmp_path):
    # Questions for the LLM: a command ("what time is it") would be answered by the intent stage instead.
    result, events = chat(tmp_path, ["法国的首都是哪里？", "What is the capital of France?"])

    assert result.returncode == 0, result.stderr
    assert [p["language"] for p in named(events, "llm_prompt")] == ["zh", "en"]


def test_chat_can_speak_its_answers(tmp_path):
    out = tmp_path / "spoken.wav"

    result, events = chat(tmp_path, ["What is the capital of France?"], "--speak", "--output", str(out))

    assert result.returncode == 0, result.stderr
    assert named(events, "playback_start") and named(events, "tts_first_audio")
    with wave.open(str(out)) as spoken:
        assert spoken.getnframes() / spoken.getframerate() > 1.0
