"""Configuration, routing, incidents and rate limits: the Dispatcher over a real catalog and real servers."""

from __future__ import annotations

import email
import email.policy
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alarmsieve.notify import NotificationLedger, NotifyConfigError, load_config, parse_config
from alarmsieve.notify.dispatch import Dispatcher, retry
from alarmsieve.notify.grouping import IncidentBook
from alarmsieve.pfs.db import Base, get_engine
from tests.test_notify import notification
from tests.test_notify_servers import MqttSubscriber, SmtpServer

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Base.metadata.create_all(get_engine(url))
    return url


def dispatcher(url: str, tmp_path: Path, env: dict[str, str] | None = None) -> Dispatcher:
    return Dispatcher(
        NotificationLedger(url), IncidentBook(url), tmp_path / "outbox", env or {}, max_attempts=2, backoff=0.01
    )


def alarm(i: int, *, seconds: float, labels: tuple[str, ...] = ("person",), verdict: str = "alert", camera="cam-1"):
    return notification(
        key=f"alarm-{camera}-{i}",
        camera=camera,
        time=T0 + timedelta(seconds=seconds),
        verdict=verdict,
        objects=[{"label": label, "score": 0.9, "box": [1, 2, 30, 40]} for label in labels],
    )


def config(**extra: Any) -> Any:
    doc: dict[str, Any] = {
        "sites": {"north": ["cam-1", "cam-2"]},
        "timezones": {"north": "Europe/Paris"},
        "channels": [{"name": "box", "type": "outbox", "sender": "alarms@example.org"}],
        "routes": [
            {"channel": "box", "to": ["oncall@example.org", "boss@example.org"], "match": {"severity": ["alert"]}},
            {"channel": "box", "to": ["queue@example.org"], "match": {"severity": ["review", "alert"]}},
        ],
        "grouping": {"window_s": 60, "update_every_s": 15},
    }
    doc.update(extra)
    return parse_config("/notify.json", json.dumps(doc).encode())


def eml(tmp_path: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted((tmp_path / "outbox").glob("*.eml"))
    ]


# --- configuration ----------------------------------------------------------------------------------


def test_config_errors_name_the_field_and_fix() -> None:
    cases = [
        (b"channels: [{name: x, type: pager}]", "channels.0"),
        (b"channels: [{name: m, type: smtp, sender: a@b, host: h}]\nroutes: [{channel: nope}]", "no channel named"),
        (b"channels: [{name: m, type: smtp, sender: a@b, host: h}]\nroutes: [{channel: m}]", "list recipients"),
        (b"timezones: {cam-1: Mars/Olympus}", "unknown time zone"),
        (b"sites: {a: [cam-1], b: [cam-1]}", "both 'a' and 'b'"),
        (b"channels: [{name: w, type: webhook, url: 'http://x', secret: {env: S}, allowed_hosts: []}]", "allowed"),
        (b"channels: [{name: s, type: sendgrid, sender: a@b, api_key: {env: A, file: /x}}]", "exactly one of"),
        (b"grouping: {window: 5}", "grouping.window"),
        (b"- a list", "must be a mapping"),
        (b"channels: [", "not valid YAML"),
    ]
    for text, expected in cases:
        with pytest.raises(NotifyConfigError, match=r"rules@master:/notify\.yaml") as info:
            parse_config("/notify.yaml", text)
        assert expected in str(info.value), (text, str(info.value))
    with pytest.raises(NotifyConfigError, match="keep one"):
        load_config({"/notify.json": b"{}", "/notify.yaml": b""})
    assert load_config({"/default.yaml": b"defaults: {}"}) == (None, None)


def test_secrets_from_env_and_file_never_logged(url: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "smtp.pass"
    secret_file.write_text("file-secret-XYZ\n")
    cfg = parse_config(
        "/notify.yaml",
        f"""
channels:
  - {{name: mail, type: smtp, sender: a@example.org, host: 127.0.0.1, port: 9, security: plain,
      username: u, password: {{file: {secret_file}}}}}
  - {{name: sg, type: sendgrid, sender: a@example.org, api_key: {{env: MY_SG_KEY}}}}
routes:
  - {{channel: mail, to: [x@example.org]}}
  - {{channel: sg, to: [x@example.org]}}
""".encode(),
    )
    d = dispatcher(url, tmp_path, env={})
    with pytest.raises(NotifyConfigError, match="MY_SG_KEY is not set"):
        d.dispatch(cfg, alarm(1, seconds=0), ["person"])
    d = dispatcher(url, tmp_path, env={"MY_SG_KEY": "SG.env-secret-ABC"})
    mail = d.channel(cfg, cfg.channel("mail"), "x@example.org")
    sg = d.channel(cfg, cfg.channel("sg"), "x@example.org")
    assert mail._password == "file-secret-XYZ"  # type: ignore[attr-defined]
    assert "file-secret-XYZ" not in repr(mail) and "SG.env-secret-ABC" not in repr(sg)
    missing = parse_config(
        "/n.yaml", b"channels: [{name: s, type: sendgrid, sender: a@b, api_key: {file: /nonexistent/key}}]"
    )
    with pytest.raises(NotifyConfigError, match="cannot read secret file /nonexistent/key"):
        d.channel(missing, missing.channel("s"), "x@example.org")
    assert "file-secret-XYZ" not in caplog.text and "SG.env-secret-ABC" not in caplog.text


# --- routing and incidents --------------------------------------------------------------------------


def test_ten_alarms_of_one_intruder_in_30s_are_one_notification_plus_updates(url: str, tmp_path: Path) -> None:
    d = dispatcher(url, tmp_path)
    cfg = config()
    kinds = []
    for i in range(10):
        results = d.dispatch(cfg, alarm(i, seconds=i * 3.3), ["person"])
        assert len(results) == 3  # oncall, boss, queue
        assert len({r.kind for r in results}) == 1
        kinds.append(results[0].kind)
        states = {r.state for r in results}
        assert states == ({"grouped"} if results[0].kind == "quiet" else {"sent"})
    # 0 s new; an update at most every 15 s of alarm time: at 16.5 s and 33 s > 30 s? no: 9 * 3.3 = 29.7 s
    assert kinds == ["new", "quiet", "quiet", "quiet", "quiet", "update", "quiet", "quiet", "quiet", "quiet"]
    mails = eml(tmp_path)
    assert len(mails) == 2 * 3  # one new + one update, to 3 recipients
    subjects = sorted({str(m["Subject"]).strip() for m in mails})
    assert subjects[0].startswith(
        "[alarmsieve] ALERT person on cam-1 (north) at 2026-03-01 13:00:00 +01:00 (Europe/Paris)"
    )
    assert subjects[1].startswith("[alarmsieve] UPDATE ALERT person on cam-1 (north)")
    update = next(m for m in mails if "UPDATE" in m["Subject"])
    assert "Update to incident" in update.get_body(preferencelist=("plain",)).get_content()
    assert "6 alarms so far" in update.get_body(preferencelist=("plain",)).get_content()
    assert sorted(m["To"] for m in mails) == sorted(["oncall@example.org", "boss@example.org", "queue@example.org"] * 2)
    incident_ids = {r.incident_id for r in NotificationLedger(url).list()}
    assert len(incident_ids) == 1
    # after the window, the next alarm opens a new incident
    later = d.dispatch(cfg, alarm(99, seconds=29.7 + 61), ["person"])
    assert {r.kind for r in later} == {"new"}


def test_car_then_person_notifies_the_person_at_once(url: str, tmp_path: Path) -> None:
    d = dispatcher(url, tmp_path)
    cfg = config()
    car = d.dispatch(cfg, alarm(1, seconds=0, labels=("car",), verdict="review"), ["car"])
    assert [(r.recipient, r.kind, r.state) for r in car] == [("queue@example.org", "new", "sent")]  # review: queue only
    car2 = d.dispatch(cfg, alarm(2, seconds=2, labels=("car",), verdict="review"), ["car"])
    assert [r.state for r in car2] == ["grouped"]
    person = d.dispatch(cfg, alarm(3, seconds=4, labels=("person",)), ["person"])
    assert [(r.kind, r.state) for r in person] == [("escalation", "sent")] * 3
    assert sorted(r.recipient for r in person) == ["boss@example.org", "oncall@example.org", "queue@example.org"]
    assert any("ESCALATION" in m["Subject"] for m in eml(tmp_path))
    # a person again, a second later: nothing new, inside the cooldown
    again = d.dispatch(cfg, alarm(4, seconds=5, labels=("person",)), ["person"])
    assert {r.state for r in again} == {"grouped"}


def test_site_scope_groups_cameras_and_other_sites_apart(url: str, tmp_path: Path) -> None:
    d = dispatcher(url, tmp_path)
    cfg = config(grouping={"scope": "site", "window_s": 60, "update_every_s": 15})
    a = d.dispatch(cfg, alarm(1, seconds=0, camera="cam-1"), ["person"])
    b = d.dispatch(cfg, alarm(2, seconds=5, camera="cam-2"), ["person"])  # same site
    c = d.dispatch(cfg, alarm(3, seconds=5, camera="cam-9"), ["person"])  # no site: its own camera
    assert {r.kind for r in a} == {"new"} and {r.kind for r in b} == {"quiet"} and {r.kind for r in c} == {"new"}


def test_redispatch_is_stable_and_sends_nothing_new(url: str, tmp_path: Path) -> None:
    d = dispatcher(url, tmp_path)
    cfg = config()
    first = [d.dispatch(cfg, alarm(i, seconds=i * 4), ["person"]) for i in range(6)]
    sent = len(list((tmp_path / "outbox").glob("*.eml")))
    again = [dispatcher(url, tmp_path).dispatch(cfg, alarm(i, seconds=i * 4), ["person"]) for i in range(6)]
    assert [[r.kind for r in rs] for rs in again] == [[r.kind for r in rs] for rs in first]
    assert {r.state for rs in again for r in rs} <= {"already_sent", "grouped"}
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == sent


def test_rate_limit_per_recipient_sends_one_summary(url: str, tmp_path: Path) -> None:
    d = dispatcher(url, tmp_path)
    cfg = config(
        routes=[{"channel": "box", "to": ["oncall@example.org"]}],
        grouping={"window_s": 0},  # every alarm its own incident: the worst flood
        rate_limit={"max_messages": 3, "period_s": 3600},
    )
    states = [d.dispatch(cfg, alarm(i, seconds=i * 600), ["person"])[0].state for i in range(6)]
    assert states == ["sent", "sent", "sent", "rate_limited", "rate_limited", "rate_limited"]
    mails = eml(tmp_path)
    summaries = [m for m in mails if str(m["Subject"]).strip().startswith("[alarmsieve] SUMMARY")]
    assert len(mails) == 4 and len(summaries) == 1
    assert "Rate limit reached" in summaries[0].get_body(preferencelist=("plain",)).get_content()
    # reprocessing a limited alarm does not send it later
    assert d.dispatch(cfg, alarm(4, seconds=2400), ["person"])[0].state == "rate_limited"
    # escalations are never held back by the limit
    car_cfg = config(
        routes=[{"channel": "box", "to": ["oncall@example.org"], "match": {"severity": ["review", "alert"]}}],
        rate_limit={"max_messages": 3, "period_s": 3600},
    )
    d.dispatch(car_cfg, alarm(50, seconds=9000, labels=("car",), verdict="review"), ["car"])
    esc = d.dispatch(car_cfg, alarm(51, seconds=9001), ["person"])
    assert [(r.kind, r.state) for r in esc] == [("escalation", "sent")]


def test_dead_letter_summary_and_retry(url: str, tmp_path: Path) -> None:
    ledger = NotificationLedger(url)
    d = dispatcher(url, tmp_path)
    with SmtpServer(reject="550 5.1.1 mailbox unavailable") as server:
        cfg = config(
            channels=[
                {"name": "mail", "type": "smtp", "sender": "a@example.org", "host": "127.0.0.1", "port": server.port}
                | {"security": "plain"}
            ],
            routes=[{"channel": "mail", "to": ["ops@example.org"]}],
        )
        [r] = d.dispatch(cfg, alarm(1, seconds=0), ["person"])
        assert (r.state, r.dead, r.attempts) == ("failed", True, 1)
        # the pipeline never resends a dead letter by itself
        [again] = dispatcher(url, tmp_path).dispatch(cfg, alarm(1, seconds=0), ["person"])
        assert (again.state, again.attempts) == ("failed", 1)
    summary = ledger.summary()
    assert (summary.failed, summary.dead_letter, summary.sent, summary.pending) == (1, 1, 0, 0)
    [row] = ledger.list_failed(dead_only=True)
    with SmtpServer() as fixed:
        cfg2 = cfg.model_copy(
            update={"channels": [cfg.channels[0].model_copy(update={"port": fixed.port})]}
        )  # the operator fixed the relay
        result = retry(ledger, row.id, cfg2, tmp_path / "outbox", {})
        assert (result.state, result.attempts) == ("sent", 2)
        assert retry(ledger, row.id, cfg2, tmp_path / "outbox", {}).state == "already_sent"
    assert len(fixed.messages) == 1
    assert ledger.summary().dead_letter == 0 and ledger.summary().sent == 1


def test_mqtt_route_gets_every_alarm_and_an_end(url: str, tmp_path: Path) -> None:
    prefix = f"alarmsieve-route-{id(url)}"
    cfg = config(
        channels=[{"name": "bus", "type": "mqtt", "topic_prefix": prefix}],
        routes=[{"channel": "bus"}],
        grouping={"window_s": 30, "update_every_s": 15},
    )
    d = dispatcher(url, tmp_path)
    with MqttSubscriber(prefix) as sub:
        for i in range(4):
            d.dispatch(cfg, alarm(i, seconds=i * 2), ["person"])
        d.dispatch(cfg, alarm(9, seconds=300), ["person"])  # a later intruder: the first incident ends
        sub.wait_for(4 + 4 + 1 + 1 + 1)
    events = sub.events()
    assert [e["type"] for e in events] == ["new", "update", "update", "update", "end", "new"]
    first, second = events[0]["id"], events[-1]["id"]
    assert first != second and {e["id"] for e in events[:5]} == {first}


def test_migration_0002_notify_keeps_existing_rows(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    from alarmsieve.migrations import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO notifications (key, channel, recipient, state, attempts, created_at, updated_at)"
                " VALUES ('old-key', 'outbox', 'x', 'sent', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    upgrade(url)
    ledger = NotificationLedger(url)
    [row] = ledger.list()
    assert (row.key, row.state, row.dead, row.kind) == ("old-key", "sent", False, None)
    assert ledger.summary().sent == 1
    assert ledger.payload("old-key") is None
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002_notify@-1")
        assert conn.execute(text("SELECT count(*) FROM notifications")).scalar() == 1


def test_cli_lists_and_retries_dead_letters(make_workspace, tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.test_notify_pipeline import put_config

    ws = make_workspace()

    def smtp_config(port: int) -> dict[str, Any]:
        return {
            "channels": [
                {"name": "mail", "type": "smtp", "sender": "a@example.org", "host": "127.0.0.1", "port": port}
                | {"security": "plain", "timeout_s": 5}
            ],
            "routes": [{"channel": "mail", "to": ["ops@example.org"]}],
        }

    with SmtpServer(reject="550 5.1.1 mailbox unavailable") as bad:
        put_config(ws, smtp_config(bad.port))
        cfg = parse_config("/notify.json", json.dumps(smtp_config(bad.port)).encode())
        [r] = dispatcher(ws.catalog_url, tmp_path).dispatch(cfg, alarm(1, seconds=0), ["person"])
        assert r.dead
    listed = run_cli("list", "notification", "--failed", home=ws.home)
    assert listed.returncode == 0 and b"dead-letter" in listed.stdout and b"550" in listed.stdout
    [row] = [
        json.loads(x) for x in run_cli("list", "notification", "--failed", "--json", home=ws.home).stdout.splitlines()
    ]
    assert (row["channel"], row["recipient"], row["dead_letter"], row["attempts"]) == (
        "mail",
        "ops@example.org",
        True,
        1,
    )
    usage = run_cli("retry", "notification", home=ws.home)
    assert usage.returncode == 1 and b"--all-failed" in usage.stderr
    with SmtpServer() as good:
        put_config(ws, smtp_config(good.port))  # the operator fixes the relay in the rules repo
        retried = run_cli("retry", "notification", str(row["id"]), home=ws.home)
        assert retried.returncode == 0, retried.stderr
        assert b"sent" in retried.stdout
        again = run_cli("retry", "notification", "--all-failed", home=ws.home)
        assert again.returncode == 0 and b"no failed notifications" in again.stdout
    assert len(good.messages) == 1
    shown = run_cli("inspect", "notification", str(row["id"]), "--json", home=ws.home)
    assert shown.returncode == 0, shown.stderr
    [view] = [json.loads(x) for x in shown.stdout.splitlines()]
    assert (view["state"], view["attempts"], view["dead_letter"]) == ("sent", 2, False)


def test_a_quiet_incident_ends_on_its_own_once_and_never_twice(url: str, tmp_path: Path) -> None:
    prefix = f"alarmsieve-quiet-{id(url)}"
    cfg = config(
        channels=[{"name": "bus", "type": "mqtt", "topic_prefix": prefix}],
        routes=[{"channel": "bus"}],
        grouping={"window_s": 30, "update_every_s": 15},
    )
    d = dispatcher(url, tmp_path)
    now = datetime.now(UTC)
    with MqttSubscriber(prefix) as sub:
        for i in range(3):  # a replay of old alarms: their times are long past, but they just arrived
            d.dispatch(cfg, alarm(i, seconds=i * 2), ["person"])
        assert d.end_quiet_incidents(cfg, now) == []  # alarms joined it moments ago: still open
        [ended] = d.end_quiet_incidents(cfg, now + timedelta(seconds=31))
        assert (ended.kind, ended.state) == ("end", "sent")
        assert d.end_quiet_incidents(cfg, now + timedelta(seconds=60)) == []  # ended once, done
        d.dispatch(cfg, alarm(3, seconds=8), ["person"])  # the same intruder again: a new incident
        sub.wait_for(3 + 3 + 1 + 2)
    events = sub.events()
    assert [e["type"] for e in events] == ["new", "update", "update", "end", "new"]
    assert {e["id"] for e in events[:4]} == {events[0]["id"]} != {events[4]["id"]}
    assert events[3]["labels"] == ["person"] and events[3]["alarms"] == 3
    assert [r.kind for r in NotificationLedger(url).list()].count("end") == 1


def test_an_end_the_broker_did_not_take_is_sent_by_a_later_sweep(url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on: the broker is down
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    prefix = f"alarmsieve-down-{id(url)}"
    up = config(channels=[{"name": "bus", "type": "mqtt", "topic_prefix": prefix}], routes=[{"channel": "bus"}])
    down = up.model_copy(update={"channels": [up.channels[0].model_copy(update={"port": dead_port})]})
    d = dispatcher(url, tmp_path)
    later = datetime.now(UTC) + timedelta(minutes=10)
    with MqttSubscriber(prefix) as sub:
        d.dispatch(up, alarm(0, seconds=0), ["person"])
        [failed] = dispatcher(url, tmp_path).end_quiet_incidents(down, later)
        assert failed.state == "failed" and "unreachable" in failed.reason
        [sent] = dispatcher(url, tmp_path).end_quiet_incidents(up, later)  # the broker is back
        assert sent.state == "sent" and sent.key == failed.key
        sub.wait_for(3)
    assert [e["type"] for e in sub.events()] == ["new", "end"]


def test_serve_sweep_reads_the_configuration_from_the_rules_repo(make_workspace, tmp_path: Path) -> None:
    from alarmsieve.notify.sweep import end_quiet_incidents, read_notify_config

    ws = make_workspace()
    assert read_notify_config(ws.pfs) is None and end_quiet_incidents(ws.pfs, ws.catalog_url, ws.outbox) == []
    prefix = f"alarmsieve-sweep-{id(ws)}"
    doc = {"channels": [{"name": "bus", "type": "mqtt", "topic_prefix": prefix}], "routes": [{"channel": "bus"}]}
    builder = ws.pfs.start_commit("rules")
    builder.put_bytes("/notify.json", json.dumps(doc).encode())
    builder.finish()
    cfg = read_notify_config(ws.pfs)
    assert cfg is not None and cfg.channels[0].name == "bus"
    Dispatcher(
        NotificationLedger(ws.catalog_url), IncidentBook(ws.catalog_url), ws.outbox, {}, max_attempts=1
    ).dispatch(cfg, alarm(0, seconds=0), ["person"])
    with MqttSubscriber(prefix) as sub:
        [result] = end_quiet_incidents(ws.pfs, ws.catalog_url, ws.outbox, now=datetime.now(UTC) + timedelta(hours=1))
        sub.wait_for(1)
    assert result.state == "sent" and [e["type"] for e in sub.events()] == ["end"]
