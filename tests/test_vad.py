"""End of utterance with the Silero VAD, on synthesised speech with known silences."""

from __future__ import annotations

import numpy as np
from conftest import build_wav, data_clip, espeak, speech_span

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, read_wav
from voicebot.config import VadConfig
from voicebot.vad import Endpointer, EndpointKind, SileroVad


def endpoints_for(path, config: VadConfig) -> tuple[list, Endpointer]:
    samples = read_wav(path).resampled(INPUT_RATE_HZ).samples
    endpointer = Endpointer(config, SileroVad())
    endpointer.begin(0.0)
    found = []
    for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        chunk = AudioChunk(
            samples[start : start + FRAME_SAMPLES], INPUT_RATE_HZ, (start + FRAME_SAMPLES) / INPUT_RATE_HZ
        )
        found += endpointer.process(chunk)
    return found, endpointer


def test_question_start_and_end_are_found(tmp_path, speech_dir):
    question = espeak("What time is it in Tokyo?", speech_dir)
    speech_from, speech_to = speech_span(question)
    wav = build_wav(tmp_path / "in.wav", [0.5, question, 2.0])

    found, endpointer = endpoints_for(wav, VadConfig(hangover_s=0.6, early_start_s=0.2))

    assert [e.kind for e in found] == [EndpointKind.SPEECH_START, EndpointKind.PAUSE, EndpointKind.SPEECH_END]
    found = [found[0], found[2]]
    assert np.array_equal(endpointer.candidate.audio, endpointer.utterance.audio)
    assert abs(found[0].at - (0.5 + speech_from)) < 0.2
    assert abs(found[1].at - (0.5 + speech_to)) < 0.2
    assert 0 < endpointer.utterance.seconds - (speech_to - speech_from) < 0.6


def test_short_pause_inside_a_question_does_not_end_it(tmp_path, speech_dir):
    wav = build_wav(
        tmp_path / "in.wav", [0.5, espeak("Tell me", speech_dir), 0.35, espeak("a joke about cats", speech_dir), 2.0]
    )

    found, endpointer = endpoints_for(wav, VadConfig(hangover_s=0.7, early_start_s=0.2))

    start, pause, resume, end = (
        EndpointKind.SPEECH_START,
        EndpointKind.PAUSE,
        EndpointKind.RESUME,
        EndpointKind.SPEECH_END,
    )
    assert [e.kind for e in found] == [start, pause, resume, pause, end]
    assert endpointer.utterance.seconds > 2.0  # Both halves of the question.


def test_early_start_can_be_turned_off(tmp_path, speech_dir):
    wav = build_wav(
        tmp_path / "in.wav", [0.5, espeak("Tell me", speech_dir), 0.35, espeak("a joke about cats", speech_dir), 2.0]
    )

    found, _ = endpoints_for(wav, VadConfig(hangover_s=0.7, early_start_s=0))

    assert [e.kind for e in found] == [EndpointKind.SPEECH_START, EndpointKind.SPEECH_END]


def test_nobody_speaks_after_the_wake_word(tmp_path):
    wav = build_wav(tmp_path / "in.wav", [3.0])

    found, _ = endpoints_for(wav, VadConfig(no_speech_timeout_s=1.5))

    assert [e.kind for e in found] == [EndpointKind.NO_SPEECH]
    assert 1.5 <= found[0].at < 1.7


def test_endless_talk_is_cut_at_the_maximum_length():
    found, endpointer = endpoints_for(data_clip("speech_long_no_wakeword.flac"), VadConfig(max_utterance_s=4.0))

    assert found[-1].kind is EndpointKind.MAX_LENGTH
    assert 3.9 < found[-1].at - found[0].at < 4.2
    assert endpointer.utterance.seconds < 4.8


def test_streaming_matches_the_whole_file_at_once():
    from faster_whisper.vad import SileroVADModel

    from voicebot.vad import silero_model_path

    audio = read_wav(data_clip("jfk.flac")).samples[: 512 * 100]
    batch = np.ravel(SileroVADModel(str(silero_model_path()))(audio))
    vad = SileroVad()
    streamed = [vad.probability(audio[i : i + 512]) for i in range(0, len(audio), 512)]

    assert np.allclose(batch, streamed, atol=1e-4)
