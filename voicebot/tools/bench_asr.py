"""Which Whisper, and which window: error rates, ASR time and memory on real and synthetic speech.

    python -m voicebot.tools.bench_asr [--model tiny.en|base|DIR ...] [--windows auto,30] [--rounds 3]
                                       [--json FILE] [--config PATH] [--set section.key=value ...]

Each model hears the same utterances, cut as the endpointer cuts a question (its pre-roll before the speech,
its tail after), in every way being compared, one after another in the same run and on the same pinned
worker as the pipeline's:
- `today`: faster-whisper's own `WhisperModel.transcribe`, as voicebot called it before windows were sized
  (every window padded to 30 s, and with asr.language auto a second 30-s encoder pass to detect it);
- each of `--windows`: the Transcriber with asr.window_s set to that (`auto`, or seconds; 30 is Whisper's
  own window in one pass).
The sets: the questions of `voicebot bench`'s reference turns and more questions said by the configured
Piper voice (without its random variation, so every run hears the same), the same said by espeak-ng (robotic;
when it is installed), and real English and Mandarin recordings from tests/data (present in a checkout, not in
a wheel). It prints, per model, set and way, the word (or, for Chinese, character) error rate, the median ASR
time and its ratio to `today` and to the 30-s window, how many transcripts repeat themselves, how often the
loop guard decoded a question again in the 30-s window, and memory.

`timed_transcripts()` is the measurement itself, for `voicebot bench` to compare windows on its own turns.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import gc
import json
import logging
import multiprocessing
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from voicebot.asr import AsrService, Transcriber, Transcript, repeats_itself
from voicebot.audio import INPUT_RATE_HZ, AudioChunk, read_wav
from voicebot.config import AsrConfig, Config, load_config
from voicebot.errors import VoicebotError
from voicebot.models.paths import resolve_asr, resolve_voices
from voicebot.runtime.threads import PinnedWorker, resolve_cores
from voicebot.tools.machine import machine as machine_of
from voicebot.tools.recordings import (
    RECORDINGS,
    SPEECH_RMS,
    WAKE_WORD_RECORDINGS,
    recording_samples,
    recordings_present,
    speech_span,
)
from voicebot.vad import PRE_ROLL_S, TAIL_S

log = logging.getLogger("voicebot.tools.bench_asr")

Window = float | Literal["auto"]
TODAY = "today"
HESITATION_S = 0.4
# The recordings with a word-for-word transcript that are questions, not wake words.
QUESTION_RECORDINGS = tuple(r for r in RECORDINGS if r.transcript and r.name not in WAKE_WORD_RECORDINGS)


# The questions of `voicebot bench`'s reference turns (voicebot/tools/bench/turns.py), a pause marked "|".
REFERENCE_QUESTIONS = (
    "How far away is the moon,|from the earth?",
    "What is the capital of France?",
    "How do plants make food?",
    "Why is the sky blue?",
    "Give me a tip|for cooking rice.",
    "What causes rain?",
    "Why do leaves change colour in autumn?",
)
# Kennedy's "what your country can do for you, ask what you can do for your country", as in those turns.
REFERENCE_EXCERPT = ("jfk.flac", 5.2, 10.6, "What your country can do for you, ask what you can do for your country.")
MORE_QUESTIONS = (
    "What time is it?",
    "Set a timer for the pasta.",
    "Turn off the kitchen lights.",
    "What is the weather like tomorrow?",
    "Tell me a joke.",
    "How many days are there in a leap year?",
    "Who wrote Romeo and Juliet?",
    "What is the tallest mountain in the world?",
    "Play some relaxing music.",
    "Remind me to call my mother tonight.",
    "How do I boil an egg?",
    "Can you recommend a good book about the history of science?",
    "What should I plant in a small garden that gets sun only in the afternoon?",
    "Please explain why the moon looks bigger when it is close to the horizon than when it is high in the sky.",
    "Stop.",
    "Cancel.",
    "Next.",
    "Yes.",
    "No.",
    "Wait.",
)


@dataclass(frozen=True)
class Utterance:
    """One question as the endpointer hands it to speech recognition, and what was said."""

    audio: np.ndarray
    said: str
    language: str
    source: str


@dataclass(frozen=True)
class TimedTranscript:
    """One utterance's transcript, and the seconds speech recognition took over it."""

    seconds: float
    text: str
    language: str
    second_passes: int
    """How many times the loop guard decoded again in Whisper's 30-s window."""


class _SecondPasses(logging.Handler):
    """Counts the Transcriber's log lines for a window decoded again because it looked like a loop."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("decoding again"):
            self.count += 1


def timed_transcripts(
    asr: Transcriber | AsrService, utterances: Sequence[np.ndarray], window_s: Window
) -> list[TimedTranscript]:
    """Each 16 kHz utterance transcribed with asr.window_s set to `window_s`, and how long that took; an
    AsrService runs it on its own pinned worker, as a turn does (call this outside a running event loop)."""
    counter = _SecondPasses()
    asr_log = logging.getLogger("voicebot.asr")
    asr_log.addHandler(counter)
    level = asr_log.level
    asr_log.setLevel(logging.INFO)
    try:
        sized = asr.with_window(window_s)
        results = []
        for audio in utterances:
            before = counter.count
            start = time.perf_counter()
            if isinstance(sized, AsrService):
                transcript = asyncio.run(sized.transcribe(audio))
            else:
                transcript = sized.transcribe(audio)
            seconds = time.perf_counter() - start
            results.append(TimedTranscript(seconds, transcript.text, transcript.language, counter.count - before))
        return results
    finally:
        asr_log.removeHandler(counter)
        asr_log.setLevel(level)


class TodaysWhisper:
    """faster-whisper's own transcribe(), called as voicebot called it before windows were sized."""

    def __init__(self, model_dir: Path, config: AsrConfig, threads: int) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """The joined text of every segment, as Whisper wrote it (no script conversion, no guards)."""
        segments, info = self.model.transcribe(
            audio,
            language=None if self.config.language == "auto" else self.config.language,
            beam_size=self.config.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            no_speech_threshold=None,
        )
        separator = "" if info.language == "zh" else " "
        return Transcript(separator.join(segment.text.strip() for segment in segments).strip(), info.language)


def todays_transcripts(
    today: TodaysWhisper, worker: PinnedWorker, utterances: Sequence[np.ndarray]
) -> list[TimedTranscript]:
    """Each utterance through faster-whisper's own transcribe() on `worker`, timed."""
    results = []
    for audio in utterances:
        start = time.perf_counter()
        transcript = worker.call(today.transcribe, audio)
        results.append(TimedTranscript(time.perf_counter() - start, transcript.text, transcript.language, 0))
    return results


# Error rates.

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_SPELLINGS = {"colour": "color", "colours": "colors"}


def words(text: str) -> list[str]:
    """English text as words to compare: lower case, no punctuation, small numbers and British spellings
    written one way."""
    found = []
    for word in re.findall(r"[a-z0-9']+", text.lower()):
        word = word.strip("'")
        if word.isdigit() and int(word) < len(_NUMBER_WORDS):
            word = _NUMBER_WORDS[int(word)]
        if word:
            found.append(_SPELLINGS.get(word, word))
    return found


def characters(text: str) -> list[str]:
    """Chinese text as characters to compare: letters and digits only, lower case."""
    return [char for char in text.lower() if char.isalnum()]


def edit_distance(said: Sequence[str], heard: Sequence[str]) -> int:
    """Substitutions, deletions and insertions that turn `said` into `heard`."""
    row = list(range(len(heard) + 1))
    for i, unit in enumerate(said, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(heard, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (unit != other))
    return row[len(heard)]


def error_rate(pairs: Sequence[tuple[str, str]], language: str) -> float:
    """Word error rate (English) or character error rate (Chinese) over (said, heard) pairs, in %."""
    units = characters if language == "zh" else words
    errors = sum(edit_distance(units(said), units(heard)) for said, heard in pairs)
    total = sum(len(units(said)) for said, _ in pairs)
    return 100.0 * errors / total


# The utterances.


def endpointed(samples: np.ndarray) -> np.ndarray:
    """The speech in `samples` as the endpointer cuts it: from its pre-roll before the speech to its tail after,
    with silence added where the recording has none."""
    span = speech_span(samples)
    if span is None:
        return samples
    start = round((span[0] - PRE_ROLL_S) * INPUT_RATE_HZ)
    end = round((span[1] + TAIL_S) * INPUT_RATE_HZ)
    padded = np.pad(samples, (max(0, -start), max(0, end - len(samples))))
    return padded[max(0, start) : max(0, start) + end - start].astype(np.float32)


def recordings_dir() -> Path | None:
    """tests/data in a checkout; None when voicebot was installed without it (from a wheel)."""
    return recordings_present(r.name for r in QUESTION_RECORDINGS)


def piper_speech(config: Config):
    """A function that gives the configured English Piper voice saying a text at 16 kHz (a pause at "|"),
    without Piper's random variation, so that every run hears the same audio."""
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(str(resolve_voices(config)["en"]))
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def say(text: str) -> np.ndarray:
        pieces = []
        for index, part in enumerate(text.split("|")):
            if index:
                pieces.append(np.zeros(int(HESITATION_S * INPUT_RATE_HZ), np.float32))
            chunks = [
                AudioChunk(chunk.audio_float_array, chunk.sample_rate).resampled(INPUT_RATE_HZ).samples
                for chunk in voice.synthesize(part, syn_config=steady)
            ]
            pieces.append(_trimmed(np.concatenate(chunks)))
        return np.concatenate(pieces)

    return say


def espeak_speech(text: str) -> np.ndarray:
    """espeak-ng's American voice saying `text`, at 16 kHz."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "said.wav"
        command = ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text.replace("|", ", ")]
        subprocess.run(command, check=True, timeout=60)
        return read_wav(path).resampled(INPUT_RATE_HZ).samples


def _trimmed(samples: np.ndarray) -> np.ndarray:
    """Speech with the silence around it cut off, so a pause put beside it is exactly as long."""
    loud = np.flatnonzero(np.abs(samples) > SPEECH_RMS)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def utterance_sets(config: Config, espeak: bool = True) -> dict[str, list[Utterance]]:
    """The sets of utterances: name -> utterances. Sets whose source is missing here are left out."""
    say = piper_speech(config)
    sets: dict[str, list[Utterance]] = {}
    turns = [Utterance(endpointed(say(q)), q.replace("|", " "), "en", "piper") for q in REFERENCE_QUESTIONS]
    data = recordings_dir()
    if data is not None:
        name, start_s, end_s, said = REFERENCE_EXCERPT
        turns.append(Utterance(endpointed(recording_samples(name, start_s, end_s)), said, "en", name))
    sets["en-turns"] = turns
    sets["en-piper"] = [Utterance(endpointed(say(q)), q, "en", "piper") for q in MORE_QUESTIONS]
    if espeak and _has_espeak():
        questions = (*REFERENCE_QUESTIONS, *MORE_QUESTIONS)
        sets["en-espeak"] = [
            Utterance(endpointed(espeak_speech(q)), q.replace("|", " "), "en", "espeak-ng") for q in questions
        ]
    if data is not None:
        for language in ("en", "zh"):
            sets[f"{language}-real"] = [
                Utterance(endpointed(recording_samples(r.name)), r.said, language, r.name)
                for r in QUESTION_RECORDINGS
                if r.language == language
            ]
    return sets


def _has_espeak() -> bool:
    import shutil

    return shutil.which("espeak-ng") is not None


# Memory.


def resident_mb() -> tuple[float, float]:
    """The process's resident memory now and at its peak since reset_peak(), in MB."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    """Start counting the peak resident memory afresh (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.warning("cannot reset the peak memory count; peaks include what came before")


# The measurement.


@dataclass(frozen=True)
class ModelUnderTest:
    """A Whisper model to measure, and the asr.language it is measured with."""

    name: str
    model_dir: Path
    language: str


def models_to_test(names: Sequence[str], config: Config) -> list[ModelUnderTest]:
    """The bundled tiny.en (language en) and multilingual base (language auto), or faster-whisper folders."""
    bundled = dataclasses.replace(config, profile="bundled", models=dataclasses.replace(config.models, asr=None))
    found = []
    for name in names:
        if name in ("tiny.en", "base"):
            language = "en" if name == "tiny.en" else "auto"
            as_bundled = dataclasses.replace(bundled, asr=dataclasses.replace(config.asr, language=language))
            found.append(ModelUnderTest(name, resolve_asr(as_bundled), language))
        else:
            folder = Path(name).expanduser()
            if not (folder / "model.bin").is_file():
                raise VoicebotError(f"--model {name}: not tiny.en, base, or a faster-whisper folder with a model.bin")
            found.append(ModelUnderTest(folder.name, folder, "auto" if _multilingual(folder) else "en"))
    return found


def _multilingual(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return len(config.get("lang_ids") or []) > 1


def measure_model(
    model: ModelUnderTest,
    config: Config,
    sets: dict[str, list[Utterance]],
    windows: Sequence[Window],
    rounds: int,
    memory: bool = True,
) -> dict[str, Any]:
    """Every set the model can hear, in every way, `rounds` times, interleaved; and its memory, if asked."""
    asr_config = dataclasses.replace(config.asr, language=model.language)
    cores = resolve_cores(asr_config.cores, "asr")
    heard = {name: s for name, s in sets.items() if model.language != "en" or name.startswith("en")}
    ways: list[str] = [TODAY, *map(str, windows)]
    worker = PinnedWorker("asr", cores)
    try:
        transcriber = worker.call(Transcriber, model.model_dir, asr_config, len(cores))
        service = AsrService(transcriber, worker, model_dir=model.model_dir)
        today = worker.call(TodaysWhisper, model.model_dir, asr_config, len(cores))
        service.warm_up()
        worker.call(today.transcribe, np.zeros(INPUT_RATE_HZ, np.float32))
        runs: dict[tuple[str, str], list[list[TimedTranscript]]] = {}
        for _ in range(rounds):
            for name, utterances in heard.items():
                audio = [u.audio for u in utterances]
                for way in ways:
                    if way == TODAY:
                        timed = todays_transcripts(today, worker, audio)
                    else:
                        timed = timed_transcripts(service, audio, _window(way))
                    runs.setdefault((way, name), []).append(timed)
    finally:
        worker.close()
    rows = [
        _row(model, name, way, heard[name], runs[(way, name)], runs.get(("30", name)), runs[(TODAY, name)])
        for name in heard
        for way in ways
    ]
    everything = [u.audio for s in heard.values() for u in s]
    memory_mb = {way: memory_in_a_new_process(model, asr_config, way, everything) for way in ways} if memory else None
    return {
        "model": model.name,
        "model_dir": str(model.model_dir),
        "language": model.language,
        "threads": len(cores),
        "memory_mb": memory_mb,
        "rows": rows,
    }


def memory_in_a_new_process(
    model: ModelUnderTest, asr_config: AsrConfig, way: str, utterances: list[np.ndarray]
) -> dict[str, float]:
    """What loading the model and hearing every utterance once `way` adds to a fresh process's resident
    memory: a process of its own, since CTranslate2 keeps the buffers of a larger window for the next call."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_memory, model, asr_config, way, utterances).result()


def _memory(model: ModelUnderTest, asr_config: AsrConfig, way: str, utterances: list[np.ndarray]) -> dict[str, float]:
    cores = resolve_cores(asr_config.cores, "asr")
    gc.collect()
    before_mb, _ = resident_mb()
    if way == TODAY:
        transcribe = TodaysWhisper(model.model_dir, asr_config, len(cores)).transcribe
    else:
        transcribe = Transcriber(model.model_dir, asr_config, len(cores)).with_window(_window(way)).transcribe
    loaded_mb, _ = resident_mb()
    reset_peak()
    for audio in utterances:
        transcribe(audio)
    _, peak_mb = resident_mb()
    return {"loaded": round(loaded_mb - before_mb, 1), "peak": round(peak_mb - before_mb, 1)}


def _per_utterance_median(runs: list[list[TimedTranscript]]) -> list[float]:
    return [statistics.median(run[i].seconds for run in runs) for i in range(len(runs[0]))]


def _row(
    model: ModelUnderTest,
    name: str,
    way: str,
    utterances: list[Utterance],
    runs: list[list[TimedTranscript]],
    whole_window: list[list[TimedTranscript]] | None,
    today: list[list[TimedTranscript]],
) -> dict[str, Any]:
    """One line of the table: a model hearing one set one way."""
    first = runs[0]
    language = utterances[0].language
    median_s = statistics.median(_per_utterance_median(runs))
    today_s = statistics.median(_per_utterance_median(today))
    whole_s = statistics.median(_per_utterance_median(whole_window)) if whole_window else None
    loops = sum(repeats_itself(t.text) and not repeats_itself(u.said) for t, u in zip(first, utterances, strict=True))
    same = None
    if whole_window:
        units = characters if language == "zh" else words
        same = sum(units(t.text) == units(w.text) for t, w in zip(first, whole_window[0], strict=True))
    return {
        "model": model.name,
        "set": name,
        "way": way,
        "utterances": len(utterances),
        "error_rate": round(
            error_rate([(u.said, t.text) for u, t in zip(utterances, first, strict=True)], language), 1
        ),
        "metric": "CER" if language == "zh" else "WER",
        "median_s": round(median_s, 4),
        "ratio_to_today": round(median_s / today_s, 3),
        "ratio_to_30s": None if whole_s is None else round(median_s / whole_s, 3),
        "same_words_as_30s": same,
        "languages_wrong": sum(t.language != language for t in first) if model.language == "auto" else 0,
        "loops": loops,
        "second_passes": sum(t.second_passes for t in first),
        "transcripts": [
            {"said": u.said, "heard": t.text, "language": t.language} for u, t in zip(utterances, first, strict=True)
        ],
    }


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, one line per model, set and way."""
    header = (
        f"{'model':10} {'set':9} {'way':6} {'n':>3} {'error':>9} {'median s':>9} {'/today':>7} {'/30 s':>6} "
        f"{'same':>6} {'loops':>5} {'again':>5} {'lang':>4}"
    )
    lines = [header]
    for model in results["models"]:
        for row in model["rows"]:
            same = "" if row["same_words_as_30s"] is None else f"{row['same_words_as_30s']}/{row['utterances']}"
            whole = "" if row["ratio_to_30s"] is None else f"{row['ratio_to_30s']:.2f}"
            lines.append(
                f"{row['model']:10} {row['set']:9} {row['way']:6} {row['utterances']:>3} "
                f"{row['metric']} {row['error_rate']:>4.1f}% {row['median_s']:>9.3f} {row['ratio_to_today']:>7.2f} "
                f"{whole:>6} {same:>6} {row['loops']:>5} {row['second_passes']:>5} {row['languages_wrong']:>4}"
            )
        if model["memory_mb"] is not None:
            memory = "; ".join(
                f"{way}: {mb['loaded']:.0f} MB loaded, {mb['peak']:.0f} MB at the peak"
                for way, mb in model["memory_mb"].items()
            )
            lines.append(f"{model['model']} memory, each in a new process: {memory}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The machine, and the versions that matter here."""
    return machine_of("faster-whisper", "ctranslate2")


def _window(text: str) -> Window:
    if text == "auto":
        return "auto"
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a window is auto or seconds from 1 to 30") from None
    if not 1 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"{text!r}: a window is auto or seconds from 1 to 30")
    return int(seconds) if seconds.is_integer() else seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.tools.bench_asr", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="tiny.en, base (the bundled ones), or a faster-whisper folder; repeatable (default: tiny.en and base)",
    )
    parser.add_argument(
        "--windows",
        default="auto,30",
        type=lambda text: [_window(part.strip()) for part in text.split(",")],
        help="asr.window_s values to compare with today's path, comma-separated (default auto,30)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="times each utterance is heard each way (default 3)")
    parser.add_argument("--no-espeak", action="store_true", help="leave out the espeak-ng set")
    parser.add_argument("--json", metavar="FILE", help="write the results, with every transcript, as JSON")
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override a key")
    args = parser.parse_args(argv)
    # Only warnings are shown: timed_transcripts() turns on the Transcriber's info lines to count second passes.
    shown = logging.StreamHandler()
    shown.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", handlers=[shown])
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        config = load_config(args.config, args.set)
        models = models_to_test(args.model or ["tiny.en", "base"], config)
        sets = utterance_sets(config, espeak=not args.no_espeak)
        gc.collect()
        results = {
            "machine": machine(),
            "windows": [str(w) for w in args.windows],
            "rounds": args.rounds,
            "models": [measure_model(model, config, sets, args.windows, args.rounds) for model in models],
        }
    except VoicebotError as error:
        print(f"bench_asr: {error}", file=sys.stderr)
        return 1
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
