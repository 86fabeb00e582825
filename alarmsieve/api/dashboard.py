"""The operator dashboard: server-rendered pages (Jinja2, plain HTML forms, no JavaScript needed).

- ``/review``: verdicts newest first, filtered by site, camera, verdict, label and time, each with the
  annotated thumbnail and reasons; ``/review/<camera>/<name>``: the full image, boxes, scores, the rule
  path, model and rules versions, the notification history, and a form to mark the verdict wrong.
- ``/system``: pipelines, workers, queues, failed datums with their reasons; ``/system/logs``: the logs
  of a pipeline, job or datum.

Sign-in is by operator token (``alarmsieve token create --kind operator``), kept in an HttpOnly,
SameSite=Strict cookie (which also stops cross-site form posts).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from alarmsieve.api.feedback import FEEDBACK_REPO, read_feedback, read_verdict, store_feedback
from alarmsieve.api.ingest import IMAGES_REPO, IngestError, split_alarm_id
from alarmsieve.api.schemas import FeedbackIn
from alarmsieve.api.tables import ApiAlarm
from alarmsieve.api.tokens import Principal
from alarmsieve.pfs.paths import PathError
from alarmsieve.rules.clock import local_text
from alarmsieve.stages.records import NOTIFICATION_FILE, NotificationRecord, VerdictRecord
from alarmsieve.verdicts import shown_time

COOKIE = "alarmsieve_token"
MEDIA_REPOS = {IMAGES_REPO, "validate", "detect", "assess", FEEDBACK_REPO}
MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "webp": "image/webp"}
PAGE = 100

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
templates.env.filters["urlpath"] = lambda s: quote(str(s), safe="/")
templates.env.filters["camera_time"] = lambda r: shown_time(r)  # the camera's local time, offset and zone
templates.env.filters["local_time"] = lambda when, zone: local_text(when, zone or "UTC")
router = APIRouter(include_in_schema=False)


def _state(request: Request) -> Any:
    return request.app.state.api


def dashboard_user(request: Request) -> Principal:
    token = request.cookies.get(COOKIE)
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:]
    who = _state(request).tokens.verify(token) if token else None
    if who is None or who.kind != "operator":
        raise HTTPException(401, "sign in with an operator token")
    return who


Operator = Annotated[Principal, Depends(dashboard_user)]


def _page(request: Request, name: str, who: Principal | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, **context})


# ---- sign-in ---------------------------------------------------------------------------------------
@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/review", status_code=303)


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else "/review"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _page(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login", response_model=None)
def login(
    request: Request, token: Annotated[str, Form(max_length=200)], next: Annotated[str, Form()] = "/review"
) -> Response:
    who = _state(request).tokens.verify(token)
    if who is None or who.kind != "operator":
        error = (
            "That token is unknown or revoked."
            if who is None
            else "That is a camera token; sign in with an operator token."
        )
        response = _page(request, "login.html", None, next=_safe_next(next), error=error)
        response.status_code = 401
        return response
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# ---- review ----------------------------------------------------------------------------------------
def _parse_time(text: str | None, field: str) -> datetime | None:
    if not text:
        return None
    from alarmsieve.api.app import parse_since

    try:
        return parse_since(text)
    except IngestError as exc:
        raise HTTPException(422, exc.message.replace("since=", f"{field}=")) from exc


def review_rows(
    request: Request, *, site: str, camera: str, verdict: str, label: str, since: str, until: str
) -> tuple[list[dict[str, Any]], int]:
    from alarmsieve.verdicts import read_verdicts

    state = _state(request)
    records = read_verdicts(state.ws.pfs, device=camera or None, since=_parse_time(since, "since"))
    end = _parse_time(until, "until")
    with Session(state.ingestor.engine) as s:
        sites = dict(s.execute(select(ApiAlarm.id, ApiAlarm.site)).all())
    rows = []
    for r in reversed(records):  # newest first
        alarm_id = r.alarm.lstrip("/")
        if verdict and r.verdict != verdict:
            continue
        if label and not any(d.label == label for d in r.detections):
            continue
        if end and r.time > end:
            continue
        if site and sites.get(alarm_id) != site:
            continue
        rows.append({"id": alarm_id, "site": sites.get(alarm_id), "r": r})
    return rows[:PAGE], len(rows)


@router.get("/review", response_class=HTMLResponse)
def review(
    request: Request,
    who: Operator,
    site: Annotated[str, Query(max_length=200)] = "",
    camera: Annotated[str, Query(max_length=63)] = "",
    verdict: Annotated[str, Query(max_length=10)] = "",
    label: Annotated[str, Query(max_length=50)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
) -> HTMLResponse:
    filters = {"site": site, "camera": camera, "verdict": verdict, "label": label, "since": since, "until": until}
    rows, total = review_rows(request, **filters)
    return _page(request, "review.html", who, rows=rows, total=total, filters=filters, page=PAGE)


@router.get("/review/{alarm_id:path}", response_class=HTMLResponse)
def detail(request: Request, alarm_id: str, who: Operator, saved: str | None = None) -> HTMLResponse:
    state = _state(request)
    try:
        camera, name = split_alarm_id(alarm_id)
    except IngestError as exc:
        raise HTTPException(404, exc.message) from exc
    alarm_id = f"{camera}/{name}"
    status = state.ingestor.status(alarm_id) if _exists(state, alarm_id) else None
    if status is None:
        raise HTTPException(404, f"no alarm {alarm_id!r} in images@master")
    record: VerdictRecord | None = read_verdict(state.ws, alarm_id)
    notification, ledger = _notification(state, alarm_id)
    received = state.ingestor.received(alarm_id)
    history = _history(state, alarm_id) if record is not None else None
    return _page(
        request,
        "detail.html",
        who,
        id=alarm_id,
        status=status,
        r=record,
        notification=notification,
        ledger=ledger,
        received=received,
        metadata=json.loads(received.metadata_json) if received else {},
        feedback=read_feedback(state.ws, alarm_id),
        saved=saved,
        history=history,
    )


def _history(state: Any, alarm_id: str) -> Any:
    """Every judgment of the alarm and its notifications (the page's "History" section)."""
    from alarmsieve.history import verdict_history

    return verdict_history(state.ws.pfs, state.ws.catalog_url, f"/{alarm_id}")


def _exists(state: Any, alarm_id: str) -> bool:
    pfs = state.ws.pfs
    return pfs.head(IMAGES_REPO) is not None and bool(pfs.lookup(IMAGES_REPO, "master", [f"/{alarm_id}"]))


def _notification(state: Any, alarm_id: str) -> tuple[NotificationRecord | None, Any]:
    pfs = state.ws.pfs
    if not pfs.repo_exists("notify") or pfs.head("notify") is None:
        return None, None
    path = f"/{alarm_id}/{NOTIFICATION_FILE}"
    found = pfs.lookup("notify", "master", [path]).get(path)
    if found is None or found.sha256 is None:
        return None, None
    record = NotificationRecord.model_validate_json(pfs.objects.get_bytes(found.sha256))
    from alarmsieve.notify.ledger import NotificationLedger

    ledger = NotificationLedger(state.ws.catalog_url).get(record.key) if record.key else None
    return record, ledger


@router.post("/feedback/{alarm_id:path}")
async def feedback(
    request: Request,
    alarm_id: str,
    who: Operator,
    label: Annotated[str, Form(max_length=20)],
    note: Annotated[str, Form(max_length=2000)] = "",
) -> RedirectResponse:
    try:
        body = FeedbackIn(alarm_id=alarm_id, label=label, note=note)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise HTTPException(422, "label must be false_alarm, missed_threat or correct") from exc
    try:
        out = await run_in_threadpool(store_feedback, _state(request).ws, body, who.name)
    except IngestError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    return RedirectResponse(f"/review/{quote(out.alarm_id)}?{urlencode({'saved': out.commit})}", status_code=303)


@router.get("/media/{repo}/{path:path}")
def media(request: Request, repo: str, path: str, who: Operator) -> Response:
    if repo not in MEDIA_REPOS:
        raise HTTPException(404, f"repo {repo!r} is not served here")
    pfs = _state(request).ws.pfs
    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in MEDIA_TYPES or not pfs.repo_exists(repo) or pfs.head(repo) is None:
        raise HTTPException(404, f"{repo}@master:/{path} is not an image here")
    try:
        found = pfs.lookup(repo, "master", [f"/{path}"]).get(f"/{path}")
    except PathError as exc:
        raise HTTPException(404, str(exc)) from exc
    if found is None or found.sha256 is None:
        raise HTTPException(404, f"{repo}@master:/{path} not found")
    return Response(
        pfs.objects.get_bytes(found.sha256),
        media_type=MEDIA_TYPES[ext],
        headers={"Cache-Control": "private, max-age=86400", "ETag": found.sha256},
    )


# ---- system ----------------------------------------------------------------------------------------
@router.get("/system", response_class=HTMLResponse)
def system(request: Request, who: Operator) -> HTMLResponse:
    from alarmsieve.api.app import system_status

    state = _state(request)
    status = system_status(state)
    failed = []
    for p in status.pipelines:
        for d in state.ws.pps.list_datums(p.name):
            if d.state == "failed":
                failed.append(d)
    workers = []
    runner = state.loop.runner if state.loop else None
    if runner is not None:
        for (name, version), pool in list(runner.pools.items()):
            for slot in list(pool.slots):
                workers.append(
                    {
                        "pipeline": name,
                        "version": version,
                        "id": slot.config.worker_id,
                        "pid": slot.pid or slot.process.pid,
                        "alive": slot.process.is_alive(),
                        "busy": slot.task is not None,
                        "restarts": slot.restarts,
                    }
                )
    jobs = state.ws.pps.list_jobs(limit=20)
    return _page(request, "system.html", who, status=status, failed=failed[:200], workers=workers, jobs=jobs)


@router.get("/system/logs", response_class=HTMLResponse)
def logs(
    request: Request,
    who: Operator,
    pipeline: Annotated[str, Query(max_length=63)] = "",
    job: Annotated[str, Query(max_length=64)] = "",
    datum: Annotated[str, Query(max_length=64)] = "",
    limit: Annotated[int, Query(ge=1, le=10000)] = 500,
) -> HTMLResponse:
    lines = _state(request).ws.pps.logs(pipeline=pipeline or None, job=job or None, datum=datum or None, limit=limit)
    filters = {"pipeline": pipeline, "job": job, "datum": datum}
    return _page(request, "logs.html", who, lines=lines, filters=filters, now=datetime.now(UTC))
