"""Local executor: a pool of long-lived worker processes per pipeline, supervised.

The pool hands datums to idle workers in small batches (one pipe round trip per batch; the batches
shrink to single datums as the queue drains), watches each worker's pipe and process
sentinel, and retries a datum (up to ``datum_tries``) when its stage raised, its worker died
(SIGKILL, crash) or it ran past ``datum_timeout``; a dead or hung worker is replaced.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from alarmsieve.pps.worker import DatumResult, DatumTask, WorkerConfig, WorkerHello, worker_main

_CTX = multiprocessing.get_context("spawn")  # fork is unsafe with onnxruntime/OpenCV thread pools


class WorkerStartError(RuntimeError):
    pass


# Datums go to a worker in batches of up to this many (one pipe round trip per batch, not per datum);
# batches shrink as the queue drains so that the tail is spread over every worker.
BATCH_MAX = 16

# A pool whose workers die this many times in a row (no datum succeeding in between) is crash-looping.
CRASH_LOOP_DEATHS = 3

WorkerEvent = Callable[[str, "_Slot", str], None]  # (event: started | died | stopped, slot, reason)


@dataclass
class _Slot:
    index: int
    config: WorkerConfig
    process: BaseProcess
    conn: Connection
    pid: int = 0
    task: DatumTask | None = None  # the datum the worker is on now
    rest: list[DatumTask] = field(default_factory=list)  # the rest of its batch, queued in the worker
    deadline: float | None = None
    restarts: int = 0
    identity: dict[str, str] | None = None


class WorkerPool:
    def __init__(
        self,
        make_config: Callable[[int], WorkerConfig],
        size: int,
        *,
        datum_tries: int = 3,
        datum_timeout: float | None = None,
        start_timeout: float = 300.0,
        on_worker: WorkerEvent | None = None,
    ) -> None:
        self.make_config = make_config
        self.on_worker = on_worker
        self.consecutive_deaths = 0
        self.last_death = ""
        self.size = max(1, size)
        self.datum_tries = max(1, datum_tries)
        self.datum_timeout = datum_timeout
        self.start_timeout = start_timeout
        self.slots: list[_Slot] = []
        self.restarts = 0

    # ---- lifecycle ---------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Slot:
        config = self.make_config(index)
        parent, child = _CTX.Pipe()
        process = _CTX.Process(target=worker_main, args=(child, config), name=config.worker_id, daemon=True)
        process.start()
        child.close()
        return _Slot(index, config, process, parent)

    def _await_hello(self, slot: _Slot) -> None:
        if not slot.conn.poll(self.start_timeout):
            self._kill(slot)
            raise WorkerStartError(f"worker {slot.config.worker_id} did not start within {self.start_timeout:.0f}s")
        try:
            hello: WorkerHello = slot.conn.recv()
        except EOFError as exc:
            slot.process.join(1)
            raise WorkerStartError(
                f"worker {slot.config.worker_id} exited while starting (exit code {slot.process.exitcode})"
            ) from exc
        if hello.error:
            self._kill(slot)
            raise WorkerStartError(f"worker {slot.config.worker_id} could not load its stage: {hello.error}")
        slot.pid = hello.pid
        slot.identity = hello.identity
        self._event("started", slot)

    def _event(self, what: str, slot: _Slot, reason: str = "") -> None:
        if self.on_worker is not None:
            with contextlib.suppress(Exception):  # bookkeeping must never stop the work
                self.on_worker(what, slot, reason)

    @property
    def crash_looping(self) -> bool:
        return self.consecutive_deaths >= CRASH_LOOP_DEATHS

    def start(self) -> None:
        if self.slots:
            return
        self.slots = [self._spawn(i) for i in range(self.size)]
        for slot in self.slots:  # spawn all first so model loading overlaps
            self._await_hello(slot)

    def identity(self) -> dict[str, str]:
        self.start()
        return dict(self.slots[0].identity or {})

    def _kill(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid or 0, signal.SIGKILL)
        slot.process.join(5)
        slot.conn.close()

    def _replace(self, slot: _Slot, reason: str = "") -> _Slot:
        self._kill(slot)
        self._event("died", slot, reason)
        self.consecutive_deaths += 1
        self.last_death = reason
        self.restarts += 1
        new = self._spawn(slot.index)
        new.restarts = slot.restarts + 1
        self._await_hello(new)
        self.slots[slot.index] = new
        return new

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError, BrokenPipeError):
                slot.conn.send(None)
        for slot in self.slots:
            slot.process.join(5)
            if slot.process.is_alive():
                self._kill(slot)
            self._event("stopped", slot)
        self.slots = []

    # ---- running -----------------------------------------------------------------------------------
    def run(
        self,
        tasks: list[DatumTask],
        on_result: Callable[[DatumResult, int], None],
        on_retry: Callable[[DatumTask, str], None] | None = None,
    ) -> None:
        """Run every task; ``on_result(result, attempts)`` is called once per task with its final result."""
        self.start()
        queue: deque[DatumTask] = deque(tasks)
        busy = 0

        def next_in_batch(slot: _Slot) -> None:
            slot.task = slot.rest.pop(0) if slot.rest else None
            slot.deadline = (
                time.monotonic() + self.datum_timeout if self.datum_timeout and slot.task is not None else None
            )

        def requeue_rest(slot: _Slot) -> None:
            """The worker is gone: the datums of its batch it had not started go back to the queue."""
            queue.extendleft(reversed(slot.rest))
            slot.rest = []

        def fail_or_retry(slot: _Slot, reason: str, traceback_text: str = "") -> None:
            task = slot.task
            assert task is not None
            slot.task = None
            slot.deadline = None
            if task.attempt < self.datum_tries:
                if on_retry:
                    on_retry(task, reason)
                task.attempt += 1
                queue.appendleft(task)
            else:
                on_result(
                    DatumResult(
                        task.job_id,
                        task.datum_id,
                        slot.config.worker_id,
                        ok=False,
                        reason=reason,
                        traceback=traceback_text,
                    ),
                    task.attempt,
                )

        while queue or busy:
            for slot in self.slots:
                if slot.task is None and queue:
                    size = max(1, min(BATCH_MAX, len(queue) // (4 * len(self.slots))))
                    batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                    slot.task, slot.rest = batch[0], batch[1:]
                    slot.deadline = time.monotonic() + self.datum_timeout if self.datum_timeout else None
                    # a dead worker's send fails; its sentinel reports the death below
                    with contextlib.suppress(OSError, BrokenPipeError):
                        slot.conn.send(batch)
            busy = sum(1 for s in self.slots if s.task is not None)
            if not busy:
                continue
            deadlines = [s.deadline for s in self.slots if s.deadline is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            waitables: list = [s.conn for s in self.slots if s.task] + [
                s.process.sentinel for s in self.slots if s.task
            ]
            ready = wait(waitables, timeout=timeout)
            for index in range(len(self.slots)):
                slot = self.slots[index]
                if slot.task is None:
                    continue
                if slot.conn in ready:
                    try:
                        result: DatumResult = slot.conn.recv()
                    except (EOFError, OSError):
                        result = None  # type: ignore[assignment]
                    if result is not None:
                        task = slot.task
                        # recovered by err_cmd, or a failure another attempt would repeat: final, not retried
                        if result.ok or result.recovered or result.final:
                            self.consecutive_deaths = 0
                            on_result(result, task.attempt)
                        else:
                            fail_or_retry(slot, result.reason, result.traceback)
                        next_in_batch(slot)
                        continue
                if slot.process.sentinel in ready or not slot.process.is_alive():
                    slot.process.join(1)
                    code = slot.process.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    task_reason = f"worker {slot.config.worker_id} died while processing the datum ({how})"
                    pending = slot.task
                    requeue_rest(slot)
                    new = self._replace(slot, task_reason)
                    new.task = pending
                    fail_or_retry(new, task_reason)
                elif slot.deadline is not None and time.monotonic() >= slot.deadline:
                    pending = slot.task
                    why = f"datum timed out after {self.datum_timeout:.1f}s (datum_timeout); worker replaced"
                    requeue_rest(slot)
                    new = self._replace(slot, why)
                    new.task = pending
                    fail_or_retry(new, why)
            busy = sum(1 for s in self.slots if s.task is not None)
