"""openWakeWord on real recordings and synthesised wake words."""

from __future__ import annotations

import pytest
from conftest import build_wav, data_clip, espeak

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, read_wav
from voicebot.config import WakeConfig
from voicebot.errors import ConfigError, ModelNotFoundError
from voicebot.wake import WakeWordDetector, bundled_wake_models, resolve_wake_models


def detections(detector: WakeWordDetector, path) -> list:
    samples = read_wav(path).resampled(INPUT_RATE_HZ).samples
    found = []
    for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        chunk = AudioChunk(
            samples[start : start + FRAME_SAMPLES], INPUT_RATE_HZ, (start + FRAME_SAMPLES) / INPUT_RATE_HZ
        )
        if (detection := detector.process(chunk)) is not None:
            found.append(detection)
    return found


@pytest.mark.parametrize(
    "model, clip",
    [("alexa", "alexa_real.wav"), ("hey_mycroft", "hey_mycroft_real.wav")],
)
def test_real_wake_words_are_heard_once(tmp_path, model, clip):
    wav = build_wav(tmp_path / "in.wav", [1.0, data_clip(clip), 1.5, data_clip(clip), 1.0])

    found = detections(WakeWordDetector(WakeConfig(models=(model,), refractory_s=1.0)), wav)

    assert [d.model.split("_v")[0] for d in found] == [model, model]
    assert 1.0 < found[0].heard_at < 2.6 and found[1].heard_at > found[0].heard_at + 1.5


def test_synthesised_hey_jarvis_with_the_default_model(tmp_path, speech_dir):
    wav = build_wav(tmp_path / "in.wav", [1.0, espeak("hey jarvis", speech_dir), 1.0])

    found = detections(WakeWordDetector(WakeConfig()), wav)

    assert len(found) == 1 and found[0].model.startswith("hey_jarvis") and found[0].score >= 0.5


@pytest.mark.parametrize("clip", ["jfk.flac", "speech_long_no_wakeword.flac"])
def test_speech_without_a_wake_word_is_not_heard(clip):
    assert detections(WakeWordDetector(WakeConfig()), data_clip(clip)) == []


def test_refractory_period_makes_one_wake_word_fire_once(tmp_path):
    wav = build_wav(tmp_path / "in.wav", [1.0, data_clip("alexa_real.wav"), 0.2, data_clip("alexa_real.wav"), 1.0])

    found = detections(WakeWordDetector(WakeConfig(models=("alexa",), refractory_s=3.0)), wav)

    assert len(found) == 1


def test_custom_onnx_model_by_path():
    path = bundled_wake_models()["alexa"]
    assert resolve_wake_models((str(path),)) == [path]


def test_unknown_wake_word_name_lists_the_choices():
    with pytest.raises(ConfigError, match=r"wake.models: unknown wake word 'hey_siri'; use one of .*hey_jarvis"):
        resolve_wake_models(("hey_siri",))


def test_missing_custom_model_names_the_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"custom wake word model .*nope.onnx does not exist"):
        resolve_wake_models((str(tmp_path / "nope.onnx"),))
