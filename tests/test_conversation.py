"""A conversation through the real `voicebot run`: barge-in, stop commands, follow-ups, earcons and errors.

Every clip is heard in real time, as a microphone would hear it, and the replies are played in
real time into a WAV file; the trace says what happened and when.
"""

from __future__ import annotations

import statistics

import pytest
from conftest import build_wav, data_clip, espeak
from test_e2e import first, run_assistant, words

BARGE_IN_GOAL_S = 0.15
LONG_QUESTION = "Tell me a long story about a lighthouse keeper and his dog."
# Replies are kept short in these tests except where a long one is the point.
NO_FOLLOW_UP = ["--set", "conversation.follow_up_s=0"]


def events_named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


def barge_in_clip(tmp_path, speech_dir, wake_clip, wake_model: str):
    """A long-answer question, then the wake word and a second question 2 to 3 s into the reply."""
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(
        tmp_path / "barge.wav",
        [
            1.0,
            hey,
            0.3,
            espeak(LONG_QUESTION, speech_dir),
            2.6,  # about 0.9 s to the first reply audio; the wake word is detected 2 to 3 s into the reply
            wake_clip,
            0.3,
            espeak("What is the capital of France?", speech_dir),
            5.0,
        ],
    )
    models = "[hey_jarvis, alexa]" if wake_model == "alexa" else "[hey_jarvis]"
    return wav, ["--set", f"wake.models={models}"]


@pytest.fixture(scope="module")
def barge_in_runs(tmp_path_factory, speech_dir):
    """The barge-in clip with an espeak "hey jarvis" and with a real recording of "Alexa"."""
    runs = {}
    for name, clip, model in (
        ("espeak-hey-jarvis", lambda: espeak("hey jarvis", speech_dir), "hey_jarvis"),
        ("real-alexa", lambda: data_clip("alexa_real.wav"), "alexa"),
    ):
        folder = tmp_path_factory.mktemp(name)
        wav, wake_args = barge_in_clip(folder, speech_dir, clip(), model)
        log, events = run_assistant(folder, wav, *wake_args, *NO_FOLLOW_UP, "--set", "llm.max_reply_tokens=200")
        runs[name] = (log, events)
    return runs


def test_barge_in_silences_the_reply_within_the_goal_and_answers_the_new_question(barge_in_runs):
    reactions = []
    for name, (_log, events) in barge_in_runs.items():
        wakes = events_named(events, "wake")
        assert len(wakes) == 2, (name, [e["event"] for e in events])
        barge_in = first(events, "barge_in")
        assert barge_in["state"] == "speaking", (name, barge_in)
        stop = first(events, "playback_stop")
        first_reply_started = first(events, "playback_start")["t"]
        # The second wake word came 2 to 3 s into the reply, which was still playing.
        assert 1.5 <= wakes[1]["t"] - first_reply_started <= 3.5, (name, wakes[1], first_reply_started)
        reactions.append(stop["t"] - wakes[1]["t"])
        assert 0 <= stop["t"] - wakes[1]["t"] < 1.0, (name, stop, wakes[1])
        ends = [e["reason"] for e in events_named(events, "turn_end")]
        assert ends == ["cancelled", "answered"], (name, ends)
        transcripts = [e["text"] for e in events_named(events, "transcript")]
        assert {"capital", "france"} <= words(transcripts[-1]), (name, transcripts)
        # Nothing of the first reply is heard after the stop: the next audio is the second answer's.
        later_starts = [e["t"] for e in events_named(events, "playback_start") if e["t"] > stop["t"]]
        assert later_starts and later_starts[0] > stop["t"] + 0.3, (name, later_starts)
    median = statistics.median(reactions)
    print(f"barge-in: output silent {[round(r * 1000, 1) for r in reactions]} ms after the wake event")
    assert median < BARGE_IN_GOAL_S, reactions


def test_only_what_was_heard_joins_the_history(barge_in_runs):
    for name, (log, events) in barge_in_runs.items():
        prompts = events_named(events, "llm_prompt")
        assert [p["history_turns"] for p in prompts] == [0, 1], (name, prompts)
        # The cut reply is remembered as what was heard: far fewer tokens than the long answer it was going to be.
        cut_reply = [e for e in events if e["event"] == "sentence" and e["t"] < first(events, "barge_in")["t"]]
        heard_line = next(line for line in log.splitlines() if "the person heard:" in line)
        heard = heard_line.split("the person heard: ", 1)[1].strip("'\"").removesuffix("…")
        written = " ".join(e["text"] for e in cut_reply)
        assert heard and written.startswith(heard), (name, heard, written)
        assert len(heard) < len(written), (name, heard, written)


def test_a_spoken_stop_ends_the_turn_without_the_llm(tmp_path, speech_dir):
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(tmp_path / "stop.wav", [1.0, hey, 0.3, espeak("Stop.", speech_dir), 2.0])

    _, events = run_assistant(tmp_path, wav, *NO_FOLLOW_UP)

    assert first(events, "transcript")["text"].strip(" .!").lower() == "stop"
    assert first(events, "turn_end")["reason"] == "stopped"
    assert not events_named(events, "llm_prompt") and not events_named(events, "playback_start")
    assert events[-1]["event"] == "state" and events[-1]["state"] == "idle"


def test_barge_in_can_be_turned_off(tmp_path, speech_dir):
    wav, wake_args = barge_in_clip(tmp_path, speech_dir, espeak("hey jarvis", speech_dir), "hey_jarvis")

    log, events = run_assistant(
        tmp_path, wav, *wake_args, *NO_FOLLOW_UP, "--set", "conversation.barge_in=false", "--log-level", "INFO"
    )

    assert len(events_named(events, "wake")) == 1
    assert "wake word ignored while speaking (conversation.barge_in is off)" in log
    assert not events_named(events, "barge_in") and not events_named(events, "playback_stop")
    assert [e["reason"] for e in events_named(events, "turn_end")] == ["answered"]


def test_a_follow_up_needs_no_wake_word_and_silence_closes_the_window(tmp_path, speech_dir):
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(
        tmp_path / "follow.wav",
        [
            1.0,
            hey,
            0.3,
            espeak("What is the capital of France?", speech_dir),
            4.5,  # the short answer is spoken, and the follow-up window opens
            espeak("And what is the capital of Germany?", speech_dir),
            11.0,  # the second answer, then a silent follow-up window
        ],
    )

    _, events = run_assistant(tmp_path, wav, "--set", "conversation.follow_up_s=4", "--set", "llm.max_reply_tokens=40")

    assert len(events_named(events, "wake")) == 1
    transcripts = [e["text"] for e in events_named(events, "transcript")]
    assert len(transcripts) == 2 and "germany" in transcripts[1].lower(), transcripts
    assert [e["reason"] for e in events_named(events, "turn_end")] == ["answered", "answered"]
    # The second answer is asked with the first turn as history, from the KV cache.
    prompts = events_named(events, "llm_prompt")
    assert [p["history_turns"] for p in prompts] == [0, 1]
    assert prompts[1]["prompt_tokens_cached"] > prompts[0]["prompt_tokens"]
    # Each answer opens a window with the earcon; the second closes in silence, back to the wake word.
    assert len(events_named(events, "follow_up_start")) == 2
    assert [e["name"] for e in events_named(events, "earcon")] == ["wake", "follow_up", "follow_up"]
    closed = first(events, "follow_up_end")
    last_window = events_named(events, "follow_up_start")[-1]
    assert closed["reason"] == "silence" and 4.0 <= closed["t"] - last_window["t"] <= 5.0
    assert events[-1] == {**events[-1], "event": "state", "state": "idle"}


def test_earcons_can_be_turned_off(tmp_path, speech_dir):
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(tmp_path / "quiet.wav", [1.0, hey, 0.3, espeak("What is the capital of France?", speech_dir), 8.0])

    _, events = run_assistant(tmp_path, wav, "--set", "earcons.volume=0", "--set", "conversation.follow_up_s=1")

    assert not events_named(events, "earcon")
    assert first(events, "follow_up_start")


def test_a_stalled_generation_ends_the_turn_with_the_error_earcon(tmp_path, speech_dir):
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(tmp_path / "stall.wav", [1.0, hey, 0.3, espeak("What is the capital of France?", speech_dir), 2.5])

    # No token can come within 10 ms: evaluating the prompt alone takes longer here.
    log, events = run_assistant(tmp_path, wav, "--set", "llm.stall_timeout_s=0.01", *NO_FOLLOW_UP)

    assert "the LLM produced no token for" in log and "llm.stall_timeout_s" in log
    assert first(events, "turn_end")["reason"] == "error"
    assert [e["name"] for e in events_named(events, "earcon")] == ["wake", "error"]
    assert "Traceback" not in log


def test_the_reply_is_capped_in_seconds_of_speech(tmp_path, speech_dir):
    hey = espeak("hey jarvis", speech_dir)
    wav = build_wav(tmp_path / "cap.wav", [1.0, hey, 0.3, espeak(LONG_QUESTION, speech_dir), 14.0])

    _, events = run_assistant(
        tmp_path, wav, "--set", "conversation.max_reply_s=6", "--set", "llm.max_reply_tokens=300", *NO_FOLLOW_UP
    )

    capped = first(events, "reply_capped")
    assert capped["max_reply_s"] == 6
    spoken_s = first(events, "playback_end")["t"] - first(events, "playback_start")["t"]
    assert 1.0 < spoken_s <= 6 * 1.3, spoken_s
    # It ends at a sentence boundary: every piece spoken is a whole piece from the chunker.
    assert first(events, "llm_done")["capped"] is True
    assert first(events, "turn_end")["reason"] == "answered"
