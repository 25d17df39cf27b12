"""The LLM's inference threads run only on the configured cores, read back from /proc while it generates."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from voicebot.config import config_from_dict
from voicebot.errors import ConfigError
from voicebot.llm import ChatModel, Sampling
from voicebot.models.paths import resolve_llm
from voicebot.runtime.threads import PinnedWorker, available_cores, resolve_cores

TASKS = Path("/proc/self/task")


def thread_cpu_ticks() -> dict[int, int]:
    """utime + stime of every thread in this process, in clock ticks."""
    ticks = {}
    for task in TASKS.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # The thread ended while we looked.
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def cpus_allowed(thread_id: int) -> set[int]:
    """The thread's Cpus_allowed_list, as a set of cores."""
    status = (TASKS / str(thread_id) / "status").read_text()
    listed = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
    cores: set[int] = set()
    for part in listed.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def busy_threads_while_generating(cores: tuple[int, ...]) -> tuple[dict[int, set[int]], int, ChatModel]:
    """Generate on `cores` and return the cores allowed for each thread that did work meanwhile."""
    config = config_from_dict({"profile": "bundled", "llm": {"cores": list(cores), "seed": 1, "max_reply_tokens": 160}})
    worker = PinnedWorker("llm-test", resolve_cores(config.llm.cores, "llm"))
    chat = ChatModel(resolve_llm(config), config.llm, worker)
    tokens = chat.prompt_tokens([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    try:
        main_thread = threading.get_native_id()
        before = thread_cpu_ticks()
        future = worker.submit(chat.complete, tokens, Sampling.from_config(config.llm))
        time.sleep(0.3)  # Let generation get going, then look while it runs.
        during = thread_cpu_ticks()
        assert not future.done(), "generation ended before its threads were looked at"
        allowed = {
            tid: cpus_allowed(tid) for tid, ticks in during.items() if ticks > before.get(tid, 0) and tid != main_thread
        }
        reply = future.result(timeout=120)
        assert reply
        return allowed, worker.thread_id, chat
    finally:
        worker.close()


@pytest.mark.skipif(len(available_cores()) < 2, reason="needs 2 cores to show pinning to one of them")
def test_inference_threads_stay_on_the_one_configured_core():
    core = available_cores()[-1]

    allowed, llm_thread, chat = busy_threads_while_generating((core,))

    assert llm_thread in allowed, "the LLM worker thread did no work during generation"
    assert all(cores == {core} for cores in allowed.values()), allowed
    assert chat._llama.n_threads == 1 and chat._llama.context_params.n_threads_batch == 1


@pytest.mark.skipif(
    len(available_cores()) < 3,
    reason=f"needs 3 cores to confine 2 inference threads to a strict subset; this machine has {len(available_cores())}",
)
def test_several_inference_threads_stay_inside_a_strict_subset_of_the_cores():
    cores = available_cores()
    subset = cores[1:]  # Every core but the first, as llm.cores: auto chooses: at least 2, and one left out.

    allowed, llm_thread, chat = busy_threads_while_generating(subset)

    n_threads = chat._llama.n_threads
    assert n_threads == chat._llama.context_params.n_threads_batch == len(subset) >= 2
    assert llm_thread in allowed, "the LLM worker thread did no work during generation"
    # llama.cpp's OpenMP team: the worker thread and n_threads - 1 more, all working while it generates.
    assert len(allowed) >= n_threads, allowed
    assert all(threads <= set(subset) for threads in allowed.values()), allowed
    assert os.sched_getaffinity(0) == set(cores), "pinning a worker must not change the main thread"


def test_thread_count_follows_the_cores():
    cores = available_cores()

    allowed, llm_thread, chat = busy_threads_while_generating(cores)

    assert all(threads <= set(cores) for threads in allowed.values()), allowed
    assert chat._llama.n_threads == len(cores)
    assert chat._llama.context_params.n_threads_batch == len(cores)
    assert os.sched_getaffinity(0) == set(cores), "pinning a worker must not change the main thread"


def test_a_core_that_does_not_exist_is_refused():
    missing = max(available_cores()) + 1

    with pytest.raises(ConfigError, match=rf"llm\.cores.*core {missing} is not available"):
        resolve_cores((0, missing), "llm")


def test_onnx_sessions_have_explicit_thread_counts():
    from voicebot.models.paths import resolve_voices
    from voicebot.tts import _load_voice
    from voicebot.vad import SileroVad

    voice = _load_voice(resolve_voices(config_from_dict({"profile": "bundled"}))["en"], threads=1)
    vad = SileroVad()

    for session in (voice.session, vad._session):
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
