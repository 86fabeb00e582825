"""Prometheus metrics (``/metrics``): alarms in, verdicts out, latencies, queue depth, worker restarts.

Counters count from the start of the server process (Prometheus' convention): :class:`Observer`
starts at the current heads of the stage repos and, after each job (and at each scrape), reads only
what the pipeline committed since, by ``pfs.diff``. End-to-end latency is measured for the alarms this
server received: received → verdict committed, received → notification committed. Delivery time is
read from the notification ledger for every notification sent since the server started, whatever
brought its alarm in: recorded pending → accepted by the provider, retries and backoff included.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alarmsieve.api.tables import ApiAlarm
from alarmsieve.notify.ledger import NotificationRecord
from alarmsieve.pfs.api import Pfs
from alarmsieve.pfs.db import get_engine
from alarmsieve.stages.records import (
    CLIP_VERDICT_FILE,
    DETECTIONS_FILE,
    META_FILE,
    NOTIFICATION_FILE,
    VERDICT_FILE,
)

DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
DETECTOR_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
# (repo, the file that marks one alarm done in it): a pipeline's queue = its input's alarms − its output's
QUEUE_MARKERS = {
    "images": None,
    "validate": META_FILE,
    "detect": DETECTIONS_FILE,
    "assess": VERDICT_FILE,
    "clips": CLIP_VERDICT_FILE,
    "notify": NOTIFICATION_FILE,
}
QUEUE_CACHE_S = 2.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.alarms_received = Counter(
            "alarmsieve_alarms_received", "Alarms received over HTTP", ["camera"], registry=r
        )
        self.alarms_rejected = Counter(
            "alarmsieve_alarms_rejected", "Alarm uploads refused, by reason", ["reason"], registry=r
        )
        self.verdicts = Counter(
            "alarmsieve_verdicts", "Verdicts committed, by tier and camera", ["verdict", "camera"], registry=r
        )
        self.notifications = Counter(
            "alarmsieve_notifications",
            "Notification outcomes (sent, failed, already_sent, not_needed)",
            ["state"],
            registry=r,
        )
        self.detector_latency = Histogram(
            "alarmsieve_detector_latency_seconds",
            "Detector inference time per alarm",
            buckets=DETECTOR_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "alarmsieve_end_to_end_latency_seconds",
            "Alarm received over HTTP → verdict committed (until=verdict) or notification committed "
            "(until=notification)",
            ["until"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.delivery = Histogram(
            "alarmsieve_notification_delivery_seconds",
            "Notification recorded pending → accepted by the provider (retries and backoff included), by channel",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Observer:
    """Reads new stage outputs from the repos and turns them into metrics."""

    def __init__(self, pfs: Pfs, catalog_url: str, metrics: Metrics) -> None:
        self.pfs = pfs
        self.metrics = metrics
        self.engine = get_engine(catalog_url)
        self._lock = threading.Lock()
        self._seen: dict[str, str | None] = {}
        for repo in ("detect", "assess", "notify"):
            head = pfs.head(repo) if pfs.repo_exists(repo) else None
            self._seen[repo] = head.id if head else None
        with Session(self.engine) as s:  # deliveries before this server started are not counted
            self._sent_since: datetime | None = s.scalar(select(func.max(NotificationRecord.sent_at)))

    def _new_files(self, repo: str, marker: str) -> list[tuple[str, bytes, datetime]]:
        if not self.pfs.repo_exists(repo):
            return []
        head = self.pfs.head(repo)
        if head is None or head.id == self._seen.get(repo):
            return []
        changes = self.pfs.diff(repo, self._seen.get(repo), head.id)
        self._seen[repo] = head.id
        out = []
        for change in changes:
            if change.op == "removed" or not change.new_sha256 or not change.path.endswith("/" + marker):
                continue
            alarm = change.path[: -len(marker) - 1].lstrip("/")
            out.append((alarm, self.pfs.objects.get_bytes(change.new_sha256), head.finished_at))
        return out

    def _received(self, alarm_ids: Iterable[str]) -> dict[str, datetime]:
        ids = list(alarm_ids)
        if not ids:
            return {}
        out: dict[str, datetime] = {}
        with Session(self.engine) as s:
            for start in range(0, len(ids), 500):
                q = select(ApiAlarm.id, ApiAlarm.received_at).where(ApiAlarm.id.in_(ids[start : start + 500]))
                out.update({i: t for i, t in s.execute(q)})
        return out

    def update(self) -> None:
        with self._lock:
            for _alarm, body, _at in self._new_files("detect", DETECTIONS_FILE):
                ms = json.loads(body).get("inference_ms")
                if isinstance(ms, int | float):
                    self.metrics.detector_latency.observe(ms / 1000)
            verdicts = self._new_files("assess", VERDICT_FILE)
            received = self._received(a for a, _, _ in verdicts)
            for alarm, body, at in verdicts:
                record = json.loads(body)
                self.metrics.verdicts.labels(record.get("verdict", "?"), record.get("camera", "?")).inc()
                if alarm in received:
                    self.metrics.end_to_end.labels("verdict").observe(max((at - received[alarm]).total_seconds(), 0))
            self._deliveries()
            notes = self._new_files("notify", NOTIFICATION_FILE)
            received = self._received(a for a, _, _ in notes)
            for alarm, body, at in notes:
                state = json.loads(body).get("state", "?")
                self.metrics.notifications.labels(state).inc()
                if state == "sent" and alarm in received:
                    self.metrics.end_to_end.labels("notification").observe(
                        max((at - received[alarm]).total_seconds(), 0)
                    )

    def _deliveries(self) -> None:
        """Delivery time of each notification the ledger marked sent since the last look."""
        query = select(NotificationRecord.channel, NotificationRecord.created_at, NotificationRecord.sent_at).where(
            NotificationRecord.sent_at.is_not(None)
        )
        if self._sent_since is not None:
            query = query.where(NotificationRecord.sent_at > self._sent_since)
        with Session(self.engine) as s:
            rows = list(s.execute(query.order_by(NotificationRecord.sent_at)))
        for channel, created_at, sent_at in rows:
            self.metrics.delivery.labels(channel).observe(max((sent_at - created_at).total_seconds(), 0))
            self._sent_since = sent_at


def count_alarms(pfs: Pfs, repo: str, marker: str | None) -> int:
    if not pfs.repo_exists(repo) or pfs.head(repo) is None:
        return 0
    if marker is None:
        return sum(1 for _ in pfs.walk(repo))
    return sum(1 for f in pfs.walk(repo) if f.path.endswith("/" + marker))


class SystemCollector(Collector):
    """Gauges read at scrape time: datum queue depth per stage and worker restarts per pipeline."""

    def __init__(self, pfs: Pfs, restarts: Callable[[], dict[str, int]]) -> None:
        self.pfs = pfs
        self.restarts = restarts
        self._cache: tuple[float, dict[str, int]] = (0.0, {})

    def queue_depth(self) -> dict[str, int]:
        at, cached = self._cache
        if time.monotonic() - at < QUEUE_CACHE_S:
            return cached
        counts = {repo: count_alarms(self.pfs, repo, marker) for repo, marker in QUEUE_MARKERS.items()}
        depth = {
            "validate": counts["images"] - counts["validate"],
            "detect": counts["validate"] - counts["detect"],
            "assess": counts["detect"] - counts["assess"],
            # notify reads snapshot and frame verdicts (assess) and clip verdicts (clips)
            "notify": counts["assess"] + counts["clips"] - counts["notify"],
        }
        depth = {k: max(v, 0) for k, v in depth.items()}
        self._cache = (time.monotonic(), depth)
        return depth

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "alarmsieve_datum_queue_depth", "Alarms in a stage's input not yet in its output", labels=["pipeline"]
        )
        for pipeline, depth in sorted(self.queue_depth().items()):
            queue.add_metric([pipeline], depth)
        yield queue
        restarts = GaugeMetricFamily(
            "alarmsieve_worker_restarts",
            "Workers replaced (crash, kill, timeout) since the server started",
            labels=["pipeline"],
        )
        for pipeline, n in sorted(self.restarts().items()):
            restarts.add_metric([pipeline], n)
        yield restarts
