"""The serve loops' periodic notification work: publishing ``end`` for incidents that went quiet."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from alarmsieve.notify.config import CONFIG_PATHS, NotifyConfig, load_config
from alarmsieve.notify.dispatch import DeliveryResult, Dispatcher
from alarmsieve.notify.grouping import IncidentBook
from alarmsieve.notify.ledger import NotificationLedger

if TYPE_CHECKING:
    from alarmsieve.pfs.api import Pfs

log = logging.getLogger(__name__)


def read_notify_config(pfs: Pfs, repo: str = "rules") -> NotifyConfig | None:
    """The notification configuration at the head of ``repo`` (None when there is none)."""
    head = pfs.head(repo)
    if head is None:
        return None
    wanted = [f for f in pfs.walk(repo, head.id) if f.path in CONFIG_PATHS or f.path.endswith((".yaml", ".yml"))]
    files = {f.path: pfs.objects.get_bytes(f.sha256 or "") for f in wanted}  # the rules files: sites and zones
    return load_config(files)[1]


def end_quiet_incidents(
    pfs: Pfs,
    catalog_url: str,
    outbox_dir: Path,
    *,
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> list[DeliveryResult]:
    """Close incidents no alarm joined for the grouping window; publish their MQTT ``end`` once."""
    config = read_notify_config(pfs)
    if config is None:  # no configuration: the default outbox has no incident lifecycle to end
        return []
    dispatcher = Dispatcher(NotificationLedger(catalog_url), IncidentBook(catalog_url), outbox_dir, env or os.environ)
    results = dispatcher.end_quiet_incidents(config, now)
    for r in results:
        if r.state == "failed":
            log.warning("incident end %s through %s not delivered yet: %s", r.key, r.channel, r.reason)
    return results
