"""The results for people: a table on the terminal, a Markdown block in a page, and one turn's timeline drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicebot.errors import VoicebotError
from voicebot.tools.bench.designs import DESIGNS, STAGES
from voicebot.tools.bench.measure import first_event
from voicebot.tools.bench.turns import ReferenceTurn


def format_table(results: dict[str, Any]) -> str:
    """The results as a table for the terminal."""
    lines = [
        f"voicebot bench: profile {results['profile']}, {results['turns']} turns, medians (min–max)",
        "",
        f"{'stage':38} " + " ".join(f"{heading:>22}" for _, heading in DESIGNS),
    ]
    for name, label in STAGES.items():
        lines.append(f"{label:38} " + " ".join(f"{_cell(results[key][name]):>22}" for key, _ in DESIGNS))
    lines += ["", *_headline_lines(results)]
    return "\n".join(lines)


def _headline_lines(results: dict[str, Any]) -> list[str]:
    floor = results["floor_stages"]
    barge = results["barge_in"]
    reaction = barge["reaction_s"]
    multi = results["multi_turn"]
    early = results["false_early_starts"]
    lines = [
        f"first reply audio after end of speech  {results['first_audio_s']:.3f} s",
        f"endpoint decided after end of speech   {results['endpoint_delay_s']:.3f} s "
        "(the floor: first audio cannot come sooner)",
        f"first audio − endpoint decided         {results['overhead_after_endpoint_s']:.3f} s "
        "(the pipeline's own overhead)",
        f"streaming / sequential first audio     {results['streaming_over_sequential']} "
        "against the baseline on every core "
        f"({results['streaming_over_sequential_voicebot_cores']} on voicebot's cores; "
        f"streaming without early start: {results['streaming_only_over_sequential']})",
        f"overhead against the old floor         {results['overhead_vs_floor']} (floor {results['floor_s']:.3f} s = "
        + " + ".join(f"{k.removesuffix('_s')} {v['median']:.3f}" for k, v in floor.items() if k != "total_s")
        + ")",
    ]
    if reaction:
        lines.append(
            f"barge-in: output silent {_ms_range(reaction)} after the wake event, "
            f"{_ms_range(barge['wake_end_to_silent_s'])} after the spoken wake word "
            f"({barge['stopped_playback']} of {barge['clips']} clips); "
            f"second question answered in {barge['second_question_answered']}"
        )
    else:
        lines.append(f"barge-in: no clip stopped a reply ({barge['barged_in']} of {barge['clips']} barged in)")
    lines.append(
        f"false early starts: {early['dropped']} of {early['early_starts']} early starts dropped, "
        f"in {early['turns_with_a_drop']} turns"
    )
    lines.append("multi-turn, prompt tokens evaluated / first token (voicebot | cache cleared):")
    for turn, row in multi["at"].items():
        lines.append(
            f"  turn {turn:>2}: {row['evaluated']:>5} | {row['baseline_evaluated']:>5} tokens, "
            f"{row['first_token_s']:.3f} | {row['baseline_first_token_s']:.3f} s"
        )
    lines += _intent_lines(results)
    lines += _asr_lines(results)
    lines += [
        f"CPU while listening: silence {results['idle_cpu_percent']}%, talk {results['talk_cpu_percent']}% of one core",
        f"peak RSS {results['peak_rss_mb']} MB, start to listening {results['startup_s']} s",
    ]
    return lines


def _intent_rows(results: dict[str, Any]) -> list[str]:
    intents, actions = results.get("intent_turns"), results.get("action_requests")
    if not intents or not actions:
        return []
    by_language = actions["caught_share_by_language"]
    return [
        "| end of speech → first audio: a command the intent stage answers / a question the LLM answers | "
        f"**{intents['first_audio_s']:.3f} s** / {intents['llm_first_audio_s']:.3f} s "
        f"(ratio {intents['intent_over_llm']}; matching {intents['match_ms']:.1f} ms) |",
        f"| action requests the sentences catch ({actions['requests']}, paraphrased, en and zh) | "
        f"**{actions['caught_share']:.0%}** (en {by_language['en']:.0%}, zh {by_language['zh']:.0%}) |",
        "| answers claiming an action, among those the LLM gave to requests no sentence caught | "
        f"{actions['llm_claims']} of {actions['llm_asked']} |",
    ]


def _asr_rows(results: dict[str, Any]) -> list[str]:
    windows = results.get("asr_windows")
    if not windows:
        return []
    turns, tiny, mandarin = windows["reference_turns"], windows["tiny_en"], windows["mandarin"]
    rows = [
        "| ASR per reference question, Whisper base with `asr.language: auto`: sized window, one pass / 30-s window, "
        f"one pass / before (two 30-s passes) | **{turns['sized_s']:.3f} s** / {turns['window_30_s']:.3f} s / "
        f"{turns['today_two_passes_s']:.3f} s (ratios **{turns['sized_over_30']}** and {turns['sized_over_today']}; "
        f"same words as in 30 s in {turns['same_words']} of {turns['utterances']}) |",
        "| the same, tiny.en (bundled; its `auto` keeps 30 s): 10-s window / 30-s window | "
        f"{tiny['window_10_s']:.3f} s / {tiny['window_30_s']:.3f} s (same words in {tiny['same_words_in_10']} of "
        f"{tiny['utterances']}) |",
    ]
    if mandarin:
        rows.append(
            "| ASR per real Mandarin recording, Whisper base, `asr.language: auto`: one sized pass / two 30-s passes "
            f"before | **{mandarin['sized_one_pass_s']:.3f} s** / {mandarin['today_two_passes_s']:.3f} s "
            f"(ratio **{mandarin['sized_over_today']}**; CER {mandarin['cer_sized']}% / "
            f"{mandarin['cer_today_simplified']}% with the old transcripts also made Simplified, "
            f"{mandarin['cer_today']}% as they were) |"
        )
    return rows


def _asr_lines(results: dict[str, Any]) -> list[str]:
    windows = results.get("asr_windows")
    if not windows:
        return []
    turns, mandarin = windows["reference_turns"], windows["mandarin"]
    lines = [
        f"ASR per reference question (base, auto)  {turns['sized_s']:.3f} s sized, {turns['window_30_s']:.3f} s in "
        f"one 30-s pass, {turns['today_two_passes_s']:.3f} s before (ratios {turns['sized_over_30']}, "
        f"{turns['sized_over_today']}; same words in {turns['same_words']} of {turns['utterances']})"
    ]
    if mandarin:
        lines.append(
            f"ASR per Mandarin recording (base, auto)  {mandarin['sized_one_pass_s']:.3f} s in one sized pass, "
            f"{mandarin['today_two_passes_s']:.3f} s in two 30-s passes (ratio {mandarin['sized_over_today']}); "
            f"CER {mandarin['cer_sized']}% against {mandarin['cer_today_simplified']}%"
        )
    return lines


def _intent_lines(results: dict[str, Any]) -> list[str]:
    intents, actions = results.get("intent_turns"), results.get("action_requests")
    if not intents or not actions:
        return []
    return [
        f"first audio, command answered by the intent stage  {intents['first_audio_s']:.3f} s against "
        f"{intents['llm_first_audio_s']:.3f} s for the LLM's answers (ratio {intents['intent_over_llm']}; "
        f"matching {intents['match_ms']:.1f} ms)",
        f"action requests caught by the sentences: {actions['caught_share']:.0%} of {actions['requests']} "
        f"(en {actions['caught_share_by_language']['en']:.0%}, zh {actions['caught_share_by_language']['zh']:.0%}); "
        f"the LLM claimed the action in {actions['llm_claims']} of {actions['llm_asked']} answers it was left",
    ]


MARKDOWN_START = "<!-- bench:start -->"
MARKDOWN_END = "<!-- bench:end -->"


def read_markdown_page(path: Path) -> str:
    """The page whose results block the benchmark fills in; checked before a long run, not after."""
    try:
        page = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VoicebotError(f"cannot read {path}: {error.strerror}") from None
    if MARKDOWN_START not in page or MARKDOWN_END not in page:
        raise VoicebotError(f"{path} has no {MARKDOWN_START} ... {MARKDOWN_END} block to fill in")
    return page


def update_markdown(path: Path, results: dict[str, Any], command: str) -> None:
    """Replace the results block between the bench markers in a Markdown page."""
    page = read_markdown_page(path)
    head, rest = page.split(MARKDOWN_START, 1)
    _, tail = rest.split(MARKDOWN_END, 1)
    path.write_text(f"{head}{MARKDOWN_START}\n{format_markdown(results, command)}\n{MARKDOWN_END}{tail}", "utf-8")


def format_markdown(results: dict[str, Any], command: str) -> str:
    """The results as a Markdown section."""
    machine = results["machine"]
    config = results["config"]
    barge = results["barge_in"]
    reaction = barge["reaction_s"]
    early = results["false_early_starts"]
    multi = results["multi_turn"]
    floor = results["floor_stages"]
    floor_parts = " + ".join(f"{k.removesuffix('_s')} {v['median']:.3f}" for k, v in floor.items() if k != "total_s")

    def cell(key: str, stage: str) -> str:
        return _cell(results[key][stage])

    headline = [
        "| headline | value |",
        "|---|---|",
        f"| end of speech → first reply audio | **{results['first_audio_s']:.3f} s** |",
        f"| end of speech → endpoint decided (the floor: no design can answer sooner) | "
        f"{cell('stages', 'endpoint_delay_s')} s |",
        f"| endpoint decided → first reply audio (the pipeline's own overhead) | "
        f"**{cell('stages', 'overhead_after_endpoint_s')} s**; sequential on every core "
        f"{cell('sequential_stages', 'overhead_after_endpoint_s')} s |",
        "| streaming over sequential, first audio, baseline on every core | "
        f"**{results['streaming_over_sequential']}** "
        f"(streaming without early start: {results['streaming_only_over_sequential']}) |",
        "| the same, baseline on voicebot's cores (the old method) | "
        f"{results['streaming_over_sequential_voicebot_cores']} |",
        f"| first audio over the old floor (hangover + each stage alone, {results['floor_s']:.3f} s; the old method) | "
        f"{results['overhead_vs_floor']} |",
        "| barge-in: `wake` event → output silent (end of the spoken wake word → output silent) | "
        + (
            f"**{_ms_range(reaction)}** ({_ms_range(barge['wake_end_to_silent_s'])}), "
            f"{barge['stopped_playback']} of {barge['clips']} clips; second question answered in "
            f"{barge['second_question_answered']} |"
            if reaction
            else f"no clip stopped a reply ({barge['barged_in']} of {barge['clips']} barged in) |"
        ),
        f"| false early starts (dropped when speech resumed) | {early['dropped']} of {early['early_starts']} early "
        f"starts, in {early['turns_with_a_drop']} of {results['turns']} turns |",
        f"| multi-turn, median over turns 2–{multi['turns']}: prompt tokens evaluated | "
        f"**{multi['median_after_turn_1']['evaluated']:g}** against "
        f"{multi['median_after_turn_1']['baseline_evaluated']:g} "
        "with the cache cleared |",
        f"| multi-turn, median over turns 2–{multi['turns']}: first token | "
        f"**{multi['median_after_turn_1']['first_token_s']:.3f} s** against "
        f"{multi['median_after_turn_1']['baseline_first_token_s']:.3f} s (ratio {multi['first_token_ratio']}) |",
        f"| CPU while listening to silence / to talk | **{results['idle_cpu_percent']} %** / "
        f"{results['talk_cpu_percent']} % of one core |",
        *_intent_rows(results),
        *_asr_rows(results),
        f"| peak RSS (voicebot's models) | {results['peak_rss_mb']} MB |",
        f"| start to listening | {results['startup_s']} s |",
    ]
    stage_rows = [
        "| stage | " + " | ".join(heading for _, heading in DESIGNS) + " |",
        "|---|" + "---|" * len(DESIGNS),
        *(f"| {label} | " + " | ".join(cell(key, name) for key, _ in DESIGNS) + " |" for name, label in STAGES.items()),
    ]
    turn_rows = [
        "| # | wake word | question | pauses put in | early starts (dropped) | "
        + " | ".join(f"first audio, {heading}" for _, heading in DESIGNS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(DESIGNS),
    ]
    for index, turn in enumerate(results["turn_details"], start=1):
        asked = turn["question"] + ("" if turn["speaker"] == "piper" else f" ({turn['speaker']}, a person)")
        wake = "Piper" if turn["wake"] == "piper" else f"{turn['wake']} (a person)"
        cut = " (cut at a pause)" if turn["cut_at_a_pause"] else ""
        turn_rows.append(
            f"| {index} | {wake} | {asked}{cut} | {turn['pauses']} | "
            f"{turn['early_starts']['started']} ({turn['early_starts']['dropped']}) | "
            + " | ".join(f"{turn['first_audio_s'][key]:.3f}" for key, _ in DESIGNS)
            + " |"
        )
    multi_rows = [
        "| turn | history turns | prompt tokens | evaluated: voicebot (llama.cpp's count) | evaluated: cache cleared | "
        "first token: voicebot | first token: cache cleared |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {row['turn']} | {row['history_turns']}{' + summary' if row['summary'] else ''} | "
            f"{row['prompt_tokens']} | "
            f"{row['evaluated']} ({row['evaluated_llama']}) | {row['baseline_evaluated']} | "
            f"{row['first_token_s']:.3f} s | {row['baseline_first_token_s']:.3f} s |"
            for row in multi["at"].values()
        ),
    ]
    barge_rows = [
        "| wake word | long question | wake word into the reply | wake event → output silent | "
        "end of the spoken wake word → output silent | second question answered |",
        "|---|---|---|---|---|---|",
    ]
    for row in barge["rows"]:
        wake = "Piper" if row["wake"] == "piper" else f"{row['wake']} (a person)"
        into = "–" if row["wake_into_reply_s"] is None else f"{row['wake_into_reply_s']:.2f} s"
        silent = "not speaking" if row["reaction_s"] is None else f"{row['reaction_s'] * 1000:.0f} ms"
        from_speech = "–" if row["wake_end_to_silent_s"] is None else f"{row['wake_end_to_silent_s'] * 1000:.0f} ms"
        answered = "yes" if row["second_question_answered"] else "no"
        barge_rows.append(f"| {wake} | {row['question']} | {into} | {silent} | {from_speech} | {answered} |")
    work = early["work_thrown_away_s"]
    early_line = (
        f"Each dropped early start had run {early['ran_before_drop_s']:.2f} s (median) when speech resumed; "
        f"it had used {work['asr']:.2f} s of ASR, {work['llm']:.2f} s of LLM and {work['tts']:.2f} s of TTS "
        "worker time, "
        f"and the workers were busy with it for {early['busy_after_drop_s']:.2f} s after the drop. "
        "Endpoint decided → first audio on turns with a dropped early start: "
        f"{_seconds(early['overhead_after_endpoint_s']['with_a_drop'])}; on the others: "
        f"{_seconds(early['overhead_after_endpoint_s']['without'])}."
        if early["dropped"]
        else "No early start was dropped."
    )
    recall = multi["recall"]
    compressions = "; ".join(
        f"{c['method']} of {c['turns']} turns, {c['tokens_before']} → {c['tokens_after']} tokens, "
        f"{c['tokens_evaluated']} evaluated"
        for c in multi["compressions"]
    )
    longest_wait_s = max(row["compression_wait_s"] for row in multi["rows"])
    multi_notes = [
        f"History compressed {len(multi['compressions'])} times"
        + (f" ({compressions})" if compressions else "")
        + f"; the longest wait for a compression before the next question was {longest_wait_s:.2f} s."
    ]
    quick = multi.get("quick_follow_up")
    if quick:
        multi_notes.append(
            f"A follow-up asked the moment the reply that set off a compression ended (“{quick['follow_up']}”): "
            f"first token {quick['interrupts']['first_token_s']:.2f} s after asking, interrupting the compression "
            f"(which then ran after its reply), against {quick['waits']['first_token_s']:.2f} s waiting for it; "
            f"ratio {quick['ratio']:.2f}."
        )
    if recall:
        multi_notes.append(
            f"Recall at turn {multi['turns']} (\u201c{recall['question']}\u201d, expecting "
            f"{', '.join(recall['expected'])}): \u201c{recall['answer']}\u201d; recalled: "
            f"{', '.join(recall['recalled']) or 'nothing'}."
        )
    recordings = (
        "Real recordings from `tests/data`."
        if results["recordings"]
        else "**The recordings in tests/data were not found (installed without the repository), so the turns "
        "with real people were left out.**"
    )
    return "\n".join(
        [
            f"Measured on {machine['cpu']} ({machine['cores']} cores, {machine['machine']}, "
            f"Python {machine['python']}), profile `{results['profile']}`, {results['turns']} reference turns. "
            f"voicebot's LLM on cores {config['llm.cores']}, TTS on cores {config['tts.cores']}; the sequential "
            f"baseline's LLM and TTS on cores {config['sequential llm.cores']}. {recordings} "
            "Seconds, median (min–max).",
            "",
            "    " + command,
            "",
            *headline,
            "",
            "#### Stages, by design",
            "",
            *stage_rows,
            "",
            f"Old floor, each stage alone: {floor_parts} = {results['floor_s']:.3f} s."
            + (
                f" {results['questions_cut_at_a_pause']} question(s) were cut at a pause "
                "and are left out of the medians."
                if results["questions_cut_at_a_pause"]
                else ""
            ),
            "",
            "#### Each reference turn",
            "",
            *turn_rows,
            "",
            early_line,
            "",
            "#### Barge-in",
            "",
            *barge_rows,
            "",
            f"#### One conversation of {multi['turns']} turns (text only, as `voicebot chat`)",
            "",
            *multi_rows,
            "",
            "\n\n".join(multi_notes),
        ]
    )


def _ms_range(summary: dict[str, Any]) -> str:
    return f"{summary['median'] * 1000:.0f} ms ({summary['min'] * 1000:.0f}–{summary['max'] * 1000:.0f})"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.2f}–{summary['max']:.2f})"


def plot_turn(
    turn: ReferenceTurn, streaming: list[dict[str, Any]], sequential: list[dict[str, Any]], path: Path
) -> None:
    """A timeline of one turn, voicebot above the sequential baseline: each stage's span and where audio started."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VoicebotError(
            "--plot needs matplotlib: pip install 'voicebot[bench]' (or pip install matplotlib)"
        ) from None

    figure, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    designs = (
        (axes[0], streaming, "voicebot: early start and streaming"),
        (axes[1], sequential, "sequential baseline, every core"),
    )
    # Show the turn up to a little after the later first audio; long answers play on past the edge.
    right = max(first_event(events, "playback_start")["t"] for _, events, _ in designs) + 1.0
    for axis, events, title in designs:
        spans = _spans(turn, events)
        for row, (_, start, end, colour) in enumerate(spans):
            axis.barh(row, max(min(end, right) - start, 0.01), left=start, color=colour, height=0.6)
            label = f"{end - start:.2f} s" + (" →" if end > right else "")
            axis.text(min(end, right - 0.45) + 0.03, row, label, va="center", fontsize=8)
        axis.set_yticks(range(len(spans)), [s[0] for s in spans], fontsize=8)
        axis.invert_yaxis()
        first_audio = first_event(events, "playback_start")["t"]
        axis.axvline(turn.speech_end_s, color="black", linestyle=":", linewidth=1)
        axis.axvline(first_audio, color="red", linewidth=1.5)
        axis.set_xlim(turn.speech_start_s - 0.3, right)
        title += f": first reply audio {first_audio - turn.speech_end_s:.2f} s after end of speech"
        axis.set_title(title, fontsize=10)
    axes[1].set_xlabel("seconds since the input started (dotted: end of speech; red: first reply audio)")
    figure.suptitle(f"One turn: \u201c{turn.question}\u201d", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _spans(turn: ReferenceTurn, events: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    speech_end = first_event(events, "speech_end")
    decided_at = speech_end["t"] + speech_end["endpoint_delay_s"]
    transcript = first_event(events, "transcript")
    transcript_at = transcript["t"]
    first_sentence_at = first_event(events, "sentence")["t"]
    return [
        ("question spoken", turn.speech_start_s, turn.speech_end_s, "#999999"),
        ("endpointing", turn.speech_end_s, decided_at, "#8c6bb1"),
        ("ASR", transcript_at - transcript["asr_s"], transcript_at, "#2b8cbe"),
        ("LLM to 1st sentence", transcript_at, first_sentence_at, "#41ab5d"),
        ("LLM whole answer", transcript_at, first_event(events, "llm_done")["t"], "#a1d99b"),
        ("TTS 1st audio", first_sentence_at, first_event(events, "tts_first_audio")["t"], "#fd8d3c"),
        ("playback", first_event(events, "playback_start")["t"], first_event(events, "playback_end")["t"], "#e31a1c"),
    ]
