"""Ray executor: the same pool interface as :class:`~alarmsieve.pps.executor.WorkerPool`, on Ray actors.

Each actor holds one :class:`~alarmsieve.pps.worker.Worker` (its stage and model in memory), exactly
like a local worker process. alarmsieve stays the authority: Ray's own retries are off
(``max_restarts=0``, ``max_task_retries=0``); this pool counts attempts against ``datum_tries``,
kills an actor whose datum passes ``datum_timeout``, and replaces a dead actor (a dead node takes its
actors with it) before the datum is tried again. Each actor has at most two datums in flight
(back-pressure: the running one and the next, queued in the actor so that it never waits for the
driver). Each actor is pinned (softly) to the alive node holding the fewest of the pool's actors,
so a pool spreads over nodes and a replacement goes to a node other than the one that just lost an
actor. Actors reserve no CPU while running unless the spec's ``resource_requests`` say
so, so the driver that feeds them never waits for a core (no deadlock on a 2-CPU cluster).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alarmsieve.pps.executor import WorkerStartError
from alarmsieve.pps.worker import DatumResult, DatumTask, Worker, WorkerConfig


class _WorkerActor:
    """The body of a Ray actor: a worker built once, then fed datums."""

    def __init__(self, config: WorkerConfig) -> None:
        import os

        self.worker = Worker(config)
        self.pid = os.getpid()

    def hello(self) -> tuple[int, dict[str, str], str]:
        import ray

        return self.pid, self.worker.identity(), ray.get_runtime_context().get_node_id()

    def run(self, task: DatumTask) -> DatumResult:
        return self.worker.run(task)


@dataclass
class _Actor:
    index: int
    config: WorkerConfig
    handle: Any
    node: str = ""
    pid: int = 0
    # datums handed to the actor, oldest (the one running) first, with their result refs
    inflight: deque[tuple[DatumTask, Any]] = field(default_factory=deque)
    deadline: float | None = None  # of the running datum
    identity: dict[str, str] | None = None


def ray_options(resource_requests: dict | None) -> dict[str, Any]:
    """Pachyderm ``resource_requests`` → Ray actor options (cpu, memory, gpu)."""
    # SPREAD puts a pipeline's actors on different nodes, so losing a node loses few of them
    options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
    requests = resource_requests or {}
    if "cpu" in requests:
        options["num_cpus"] = float(requests["cpu"])
    if "gpu" in requests:
        gpu = requests["gpu"]
        options["num_gpus"] = float(gpu.get("number", 1) if isinstance(gpu, dict) else gpu)
    if "memory" in requests:
        options["memory"] = _bytes(str(requests["memory"]))
    return options


def _bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


# Datums handed to one actor at a time: the running one and the next, which waits in the actor's own
# queue and starts the moment the first ends (no idle round trip to the driver). Bounded: back-pressure.
IN_FLIGHT = 2


class RayWorkerPool:
    def __init__(
        self,
        make_config: Callable[[int], WorkerConfig],
        size: int,
        *,
        datum_tries: int = 3,
        datum_timeout: float | None = None,
        address: str | None = None,
        resource_requests: dict | None = None,
        start_timeout: float = 300.0,
        coefficient: float | None = None,
    ) -> None:
        self.make_config = make_config
        self.size = max(1, size)
        # Pachyderm 1.x `parallelism_spec.coefficient`: actors per alive node, counted when the pool starts
        self.coefficient = coefficient
        self.datum_tries = max(1, datum_tries)
        self.datum_timeout = datum_timeout
        self.address = address
        self.options = ray_options(resource_requests)
        self.start_timeout = start_timeout
        self.actors: list[_Actor] = []
        self.restarts = 0

    def _ray(self) -> Any:
        if not self.address:
            # A private single-node cluster: keep Ray on the loopback interface (on Linux it otherwise
            # binds the machine's network address). Ray reads this when it is first imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        if not ray.is_initialized():
            # "local", not None: ray.init(None) joins the last cluster started on this machine (``ray
            # start``, /tmp/ray/ray_current_cluster) instead of starting a private one
            address = self.address or "local"
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return ray

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray().nodes() if n.get("Alive")]

    def _target_node(self, replacing: int, avoid: set[str]) -> str | None:
        """The alive node that can hold an actor and holds the fewest of this pool's other actors.

        Nodes in ``avoid`` (where an actor just died) come last: Ray reports a node alive until its
        health checks fail, seconds after its actors became unreachable.
        """
        options = self.options
        # an actor that asks for nothing still needs one CPU to be placed (Ray's default)
        default_cpu = 0.0 if "num_gpus" in options or "memory" in options else 1.0
        need = {
            "CPU": float(options.get("num_cpus", default_cpu)),
            "GPU": float(options.get("num_gpus", 0)),
            "memory": float(options.get("memory", 0)),
        }
        fits = [
            n["NodeID"]
            for n in self._alive_nodes()
            if all(n["Resources"].get(key, 0.0) >= amount for key, amount in need.items() if amount)
        ]
        if not fits:
            return None  # let Ray place it (or report it infeasible)
        held = Counter(a.node for a in self.actors if a.index != replacing)
        return min(fits, key=lambda node: (node in avoid, held[node], node))

    def _spawn(self, index: int, avoid: set[str] | None = None) -> _Actor:
        ray = self._ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        config = self.make_config(index)
        avoid = set(avoid or ())
        while True:
            options = dict(self.options)
            node = self._target_node(index, avoid)
            if node:
                # Ray's SPREAD alone can put both actors of a 2-actor pool on one node of two (seen on
                # Ray 2.x when actors are created one after the other); pin each actor to the
                # least-used alive node instead. soft: if that node cannot take it, Ray places it.
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
            remote_cls = ray.remote(_WorkerActor).options(name=None, **options)
            actor = _Actor(index, config, remote_cls.remote(config))
            try:
                actor.pid, actor.identity, actor.node = ray.get(actor.handle.hello.remote(), timeout=self.start_timeout)
                return actor
            except Exception as exc:
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle, no_restart=True)
                if node and node not in avoid and node not in {n["NodeID"] for n in self._alive_nodes()}:
                    avoid.add(node)  # its node died under it: not the stage's fault, try elsewhere
                    continue
                raise WorkerStartError(f"ray actor {config.worker_id} could not load its stage: {exc}") from exc

    def alive_nodes(self) -> int:
        return sum(1 for n in self._ray().nodes() if n.get("Alive"))

    def start(self) -> None:
        if not self.actors:
            if self.coefficient is not None:
                self.size = max(1, round(self.coefficient * self.alive_nodes()))
            # one at a time, so that each placement sees where the previous actors went
            try:
                for index in range(self.size):
                    self.actors.append(self._spawn(index))
            except BaseException:
                self.close()  # no half-started pool
                raise

    def identity(self) -> dict[str, str]:
        self.start()
        return dict(self.actors[0].identity or {})

    def nodes(self) -> list[str]:
        return [a.node for a in self.actors]

    def _replace(self, actor: _Actor, *, node_suspect: bool = True) -> _Actor:
        ray = self._ray()
        with contextlib.suppress(Exception):  # already dead with its node
            ray.kill(actor.handle, no_restart=True)
        self.restarts += 1
        # an actor that died may have died with its node; a hung one (timeout) says nothing about it
        new = self._spawn(actor.index, avoid={actor.node} if node_suspect else None)
        self.actors[actor.index] = new
        return new

    def close(self) -> None:
        if not self.actors:
            return
        ray = self._ray()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
        self.actors = []

    def run(
        self,
        tasks: list[DatumTask],
        on_result: Callable[[DatumResult, int], None],
        on_retry: Callable[[DatumTask, str], None] | None = None,
    ) -> None:
        ray = self._ray()
        self.start()
        queue: deque[DatumTask] = deque(tasks)

        def fail_or_retry(task: DatumTask, worker: str, reason: str, trace: str = "") -> None:
            if task.attempt < self.datum_tries:
                if on_retry:
                    on_retry(task, reason)
                task.attempt += 1
                queue.appendleft(task)
            else:
                on_result(
                    DatumResult(task.job_id, task.datum_id, worker, ok=False, reason=reason, traceback=trace),
                    task.attempt,
                )

        def deadline() -> float | None:
            return time.monotonic() + self.datum_timeout if self.datum_timeout else None

        def requeue_waiting(actor: _Actor) -> None:
            # datums queued behind the lost one never started: back to the queue, no attempt used
            waiting = [t for t, _ in list(actor.inflight)[1:]]
            actor.inflight.clear()
            queue.extendleft(reversed(waiting))

        while queue or any(a.inflight for a in self.actors):
            for actor in self.actors:
                while len(actor.inflight) < IN_FLIGHT and queue:
                    task = queue.popleft()
                    actor.inflight.append((task, actor.handle.run.remote(task)))
                    if len(actor.inflight) == 1:
                        actor.deadline = deadline()
            busy = [a for a in self.actors if a.inflight]
            deadlines = [a.deadline for a in busy if a.deadline is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready, _ = ray.wait([a.inflight[0][1] for a in busy], num_returns=1, timeout=timeout)
            for actor in busy:
                task, ref = actor.inflight[0]
                if ref in ready:
                    try:
                        result: DatumResult = ray.get(ref)
                    except Exception as exc:  # the actor (or its node) died mid-datum
                        reason = (
                            f"ray actor {actor.config.worker_id} died while processing the datum: {type(exc).__name__}"
                        )
                        requeue_waiting(actor)
                        self._replace(actor)
                        fail_or_retry(task, actor.config.worker_id, reason)
                        continue
                    actor.inflight.popleft()
                    actor.deadline = deadline() if actor.inflight else None  # the next one has started
                    # as the local pool: recovered by err_cmd, or a refusal another attempt would repeat: final
                    if result.ok or result.recovered or result.final:
                        on_result(result, task.attempt)
                    else:
                        fail_or_retry(task, result.worker, result.reason, result.traceback)
                elif actor.deadline is not None and time.monotonic() >= actor.deadline:
                    requeue_waiting(actor)
                    self._replace(actor, node_suspect=False)
                    fail_or_retry(
                        task,
                        actor.config.worker_id,
                        f"datum timed out after {self.datum_timeout:.1f}s (datum_timeout); actor replaced",
                    )
