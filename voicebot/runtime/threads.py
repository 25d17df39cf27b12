"""Worker threads for blocking model calls, each pinned to chosen CPU cores, taskset-style.

Inference libraries (llama.cpp's OpenMP team, CTranslate2, ONNX Runtime) start their own
threads from the thread that first calls them, and those threads inherit its CPU affinity.
So each model gets one long-lived worker thread that pins itself before the model loads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from typing import AsyncIterator, Callable, Iterator, Literal, TypeVar

from voicebot.errors import ConfigError

T = TypeVar("T")
Role = Literal["llm", "tts", "asr"]
CallWatcher = Callable[[str, float, float], None]
"""Told of every call a worker ran: its name, and when the call started and ended (time.monotonic())."""


def available_cores() -> tuple[int, ...]:
    """The cores this process may run on."""
    return tuple(sorted(os.sched_getaffinity(0)))


def resolve_cores(spec: str | tuple[int, ...], role: Role) -> tuple[int, ...]:
    """Turn a config's `cores` value into concrete core numbers, refusing cores that do not exist."""
    cores = available_cores()
    if spec == "auto":
        if role == "llm":
            # Core 0 is left to synthesis and the always-on listener, so speech never waits on the LLM.
            return cores[1:] if len(cores) >= 2 else cores
        if role == "tts":
            return cores[:1]
        return cores
    missing = sorted(set(spec) - set(cores))
    if missing:
        raise ConfigError(
            f"config error: {role}.cores = {list(spec)}: core {missing[0]} is not available; "
            f"this machine offers cores {', '.join(map(str, cores))} (or use auto)"
        )
    return tuple(sorted(set(spec)))


class PinnedWorker:
    """One named thread, pinned to `cores`, that runs every call for one model in order."""

    def __init__(self, name: str, cores: tuple[int, ...]) -> None:
        self.name = name
        self.cores = cores
        self.thread_id: int | None = None
        self._watchers: tuple[CallWatcher, ...] = ()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=self._pin
        )

    def _pin(self) -> None:
        os.sched_setaffinity(0, self.cores)
        self.thread_id = threading.get_native_id()

    def submit(self, fn: Callable[..., T], *args) -> concurrent.futures.Future[T]:
        """Run fn(*args) on the pinned thread."""
        watchers = self._watchers
        if not watchers:
            return self._executor.submit(fn, *args)

        def watched() -> T:
            started = time.monotonic()
            try:
                return fn(*args)
            finally:
                ended = time.monotonic()
                for watcher in watchers:
                    watcher(self.name, started, ended)

        return self._executor.submit(watched)

    @contextlib.contextmanager
    def watched(self, watcher: CallWatcher) -> Iterator[None]:
        """Within the block, tell `watcher` of every call this worker runs, whoever asked for it (the benchmark's
        view of how long each stage worked, through the services as any client uses them)."""
        self._watchers = (*self._watchers, watcher)
        try:
            yield
        finally:
            self._watchers = tuple(w for w in self._watchers if w is not watcher)

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on the pinned thread and wait for it, from synchronous code."""
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on the pinned thread without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self, wait: bool = True) -> None:
        """End the thread once queued calls finish; without `wait`, drop queued calls and return at once."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


async def iterate_in_worker(worker: PinnedWorker, make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking generator on `worker` and yield its items on the event loop as they come.

    Leaving the loop early (break, cancellation, error) stops the generator at its next item.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()
    stop = threading.Event()

    def deliver(is_item: bool, value: object) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, (is_item, value))
        except RuntimeError:
            stop.set()  # The event loop has closed: nobody is listening any more.

    def pump() -> None:
        iterator = make_iterator()
        try:
            for item in iterator:
                if stop.is_set():
                    return
                deliver(True, item)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            deliver(False, error)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        deliver(False, None)

    worker.submit(pump)
    try:
        while True:
            is_item, value = await items.get()
            if is_item:
                yield value  # type: ignore[misc]
            elif value is None:
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
