"""Running the API and the pipeline in one process: the runner loop in a background thread.

``alarmsieve serve --http`` runs uvicorn in the main thread (it owns Ctrl-C) and :class:`PipelineLoop`
in a thread: the loop processes commits as they land, and an alarm posted over HTTP wakes it as soon as
the server's provisional verdict of it is done (no wait for the next ``--interval`` tick). Each
finished job bumps :attr:`PipelineLoop.generation`, which long-polling requests watch instead of
querying the catalog in a busy loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from alarmsieve.pps.api import JobInfo
from alarmsieve.pps.runner import Runner
from alarmsieve.workspace import Workspace

log = logging.getLogger("alarmsieve.api")


class _Progress:
    def __init__(self, loop: PipelineLoop) -> None:
        self.loop = loop

    def job_started(self, pipeline: str, job_id: str, to_run: int) -> None:
        pass

    def datum_done(self, pipeline: str, ok: bool) -> None:
        pass

    def job_finished(self, job: JobInfo) -> None:
        self.loop.job_finished(job)


class PipelineLoop:
    """Runs ``runner.run_until_idle`` whenever woken, or every ``interval`` seconds.

    ``niceness`` (default 5) lowers the CPU priority of the loop's thread and so of the worker processes
    it starts (Linux: a thread's nice value is its own, and a child inherits it): with the API's fast path
    (:mod:`alarmsieve.api.fastpath`) the verdict an operator waits for is computed in the server's own
    threads, and the pipeline, which commits the record a little later, should not slow it down. 0 keeps
    the workers at the server's priority.
    """

    def __init__(
        self,
        ws: Workspace,
        interval: float = 1.0,
        on_job: Callable[[JobInfo], None] | None = None,
        niceness: int = 5,
        before_round: Callable[[], None] | None = None,
    ) -> None:
        self.ws = ws
        self.interval = interval
        self.before_round = before_round  # e.g. a pass over a watched upload folder (`serve --ingest`)
        self.niceness = niceness
        self.on_job = on_job
        self.generation = 0
        self.runner: Runner | None = None
        self.error: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()

    # ---- called from other threads -----------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def wait_for_change(self, generation: int, timeout: float) -> int:
        """Block until a job finishes after ``generation`` (or timeout); returns the current generation."""
        with self._changed:
            self._changed.wait_for(lambda: self.generation != generation, timeout=timeout)
            return self.generation

    def worker_restarts(self) -> dict[str, int]:
        runner = self.runner
        out: dict[str, int] = {}
        if runner is None:
            return out
        for (name, _version), pool in list(runner.pools.items()):
            out[name] = out.get(name, 0) + pool.restarts
        return out

    def job_finished(self, job: JobInfo) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()
        if self.on_job:
            try:
                self.on_job(job)
            except Exception:  # metrics must never stop the pipeline
                log.exception("metrics update after job %s failed", job.id)

    # ---- the loop ----------------------------------------------------------------------------------
    def _lower_priority(self) -> None:
        if self.niceness <= 0 or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.niceness)
        except OSError as exc:  # not allowed here: the pipeline runs at the server's priority
            log.warning("could not lower the pipeline loop's priority: %s", exc)

    def run(self, once: bool = False, report: Callable[[JobInfo], None] | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():  # never renice the caller's process
            self._lower_priority()
        with self.ws.runner(progress=_Progress(self), wait=False) as runner:
            self.runner = runner
            self._ready.set()
            try:
                while not self._stop.is_set():
                    self._wake.clear()
                    if self.before_round is not None:
                        self.before_round()
                    for job in runner.run_until_idle():
                        if report:
                            report(job)
                    self._end_quiet_incidents()
                    if once:
                        return
                    self._wake.wait(self.interval)
            finally:
                self.runner = None

    def _end_quiet_incidents(self) -> None:
        """Publish the MQTT ``end`` of incidents that went quiet (see docs/notifications.md)."""
        from alarmsieve.errors import AlarmsieveError
        from alarmsieve.notify.sweep import end_quiet_incidents

        try:
            end_quiet_incidents(self.ws.pfs, self.ws.catalog_url, self.ws.outbox)
        except AlarmsieveError as exc:  # a bad notify.json: the stage reports it too; keep serving
            log.warning("incident ends not published: %s", exc)

    def _run_thread(self, report: Callable[[JobInfo], None] | None) -> None:
        try:
            self.run(report=report)
        except BaseException as exc:  # surfaced by start() or /api/v1/status
            self.error = exc
            self._ready.set()
            log.exception("pipeline loop stopped")

    def start(self, report: Callable[[JobInfo], None] | None = None) -> None:
        self._thread = threading.Thread(target=self._run_thread, args=(report,), name="alarmsieve-runner", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so callers know the port before uvicorn starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets; without it each response
    # waits ~40 ms on Nagle + delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ThreadedServer:
    """uvicorn in a background thread on a pre-bound socket (tests and benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        import time

        deadline = time.monotonic() + 30
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("the API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self.sock.close()
