"""The HTTP API (FastAPI): alarms in, verdicts out, status, feedback, metrics; plus the dashboard.

``create_app(ws, loop=...)`` builds the app over a workspace. With a :class:`PipelineLoop` (``serve
--http``) the server judges each snapshot itself at once (:mod:`alarmsieve.api.fastpath`: a provisional
verdict, superseded by the committed one), then wakes the runner; long polls wake when either verdict is
there. Without one (an external runner processes the workspace) the API still takes alarms and reads
verdicts.

Errors are JSON ``{"error": <reason>, "detail": <what to do>}`` with a 4xx status.
"""

import asyncio
import contextlib
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import alarmsieve
from alarmsieve.api.fastpath import FastPath, fast_path_wanted
from alarmsieve.api.feedback import store_feedback
from alarmsieve.api.ingest import (
    AlarmAccepted,
    AlarmStatus,
    Committed,
    IngestError,
    IngestLimits,
    Ingestor,
    parse_metadata,
    split_alarm_id,
)
from alarmsieve.api.metrics import Metrics, Observer, SystemCollector
from alarmsieve.api.schemas import (
    ClipVerdictOut,
    ErrorBody,
    FeedbackIn,
    FeedbackOut,
    PipelineStatus,
    RepoStatus,
    RunnerStatus,
    StatusOut,
    VerdictOut,
)
from alarmsieve.api.server import PipelineLoop
from alarmsieve.api.tables import ApiAlarm
from alarmsieve.api.tokens import Principal, TokenStore
from alarmsieve.pps.api import JobInfo
from alarmsieve.workspace import Workspace

API = "/api/v1"
COOKIE = "alarmsieve_token"
MAX_WAIT_S = 30.0
MULTIPART_OVERHEAD = 64 * 1024
_WAIT = re.compile(r"^(\d{1,6}(?:\.\d{1,3})?)(ms|s)?$")
_DURATION = re.compile(r"^(\d{1,7})([smhd])$")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 429)
}


class RateLimiter:
    """A token bucket per API token: ``per_minute`` alarms, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed; otherwise the seconds until one more request is allowed."""
        t = time.monotonic()
        with self._lock:
            level, at = self._buckets.get(key, (self.capacity, t))
            level = min(self.capacity, level + (t - at) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, t)
                return (1.0 - level) / self.rate
            self._buckets[key] = (level - 1.0, t)
            return 0.0


class ApiState:
    def __init__(
        self, ws: Workspace, loop: PipelineLoop | None, limits: IngestLimits, fast: FastPath | None = None
    ) -> None:
        self.ws = ws
        self.fast = fast
        self.loop = loop
        self.limits = limits
        self.tokens = TokenStore(ws.catalog_url)
        self.metrics = Metrics()
        self.observer = Observer(ws.pfs, ws.catalog_url, self.metrics)
        self.system = SystemCollector(ws.pfs, loop.worker_restarts if loop else dict)
        self.metrics.add_collector(self.system)
        self.limiter = RateLimiter(limits.rate_per_minute)
        self.ingestor = Ingestor(ws, limits, on_commit=self._committed, fast=fast)
        self._observe = threading.Event()
        self._observer_thread: threading.Thread | None = None

    def _committed(self, alarm: Committed) -> None:
        self.metrics.alarms_received.labels(alarm.camera).inc()
        if self.loop is None:
            return
        future = self.fast.future(alarm.alarm_id) if self.fast is not None else None
        if future is None:
            self.loop.wake()
        else:
            # The runner thread shares this process (and its GIL) with the fast path: let the provisional
            # verdict finish first (tens of milliseconds), then the pipeline takes the commit. A runner
            # already busy with other commits picks this one up in its next round all the same.
            loop = self.loop
            future.add_done_callback(lambda _: loop.wake())

    def job_finished(self, job: JobInfo) -> None:
        """Called on the runner thread: hand the metrics update to another thread (off the critical path)."""
        if job.pipeline in ("detect", "assess", "notify"):
            self._observe.set()
            if self._observer_thread is None:
                self._observer_thread = threading.Thread(
                    target=self._observe_loop, name="alarmsieve-metrics", daemon=True
                )
                self._observer_thread.start()

    def _observe_loop(self) -> None:
        while True:
            self._observe.wait()
            self._observe.clear()
            try:
                self.observer.update()
            except Exception:  # metrics must never stop anything; the next scrape tries again
                logging.getLogger("alarmsieve.api").exception("metrics update failed")


class BodyLimit:
    """Refuses a request whose declared Content-Length is over the limit before reading it (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"content-length":
                    try:
                        size = int(value)
                    except ValueError:
                        size = -1
                    if size < 0 or size > self.max_bytes:
                        detail = (
                            f"the request body is {value.decode(errors='replace')} bytes, over the limit of "
                            f"{self.max_bytes}; send one snapshot of at most that size"
                            if size >= 0
                            else "Content-Length is not a number"
                        )
                        code = 413 if size >= 0 else 400
                        body = ErrorBody(error="too_large" if size >= 0 else "bad_request", detail=detail)
                        response = JSONResponse(body.model_dump(), status_code=code)
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def api_error(status: int, code: str, detail: str) -> IngestError:
    return IngestError(status, code, detail)


def parse_wait(text: str | None) -> float:
    if not text:
        return 0.0
    match = _WAIT.match(text.strip())
    if not match:
        raise api_error(
            422, "bad_wait", f"wait={text!r}: give seconds such as 5s, 2.5 or 500ms (at most {MAX_WAIT_S:.0f}s)"
        )
    value = float(match[1]) / (1000 if match[2] == "ms" else 1)
    return min(value, MAX_WAIT_S)


def parse_since(text: str | None) -> datetime | None:
    if not text:
        return None
    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=min(seconds, 100 * 365 * 86400))
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise api_error(
            422, "bad_since", f"since={text!r}: give an ISO time (2026-11-27T10:00) or a duration such as 30m, 2h, 7d"
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def create_app(
    ws: Workspace,
    *,
    loop: PipelineLoop | None = None,
    limits: IngestLimits | None = None,
    fast_path: bool | None = None,
) -> FastAPI:
    """The app; ``fast_path`` (default: with an in-process runner, unless ALARMSIEVE_FAST_PATH=off) makes
    provisional verdicts in this process (see :mod:`alarmsieve.api.fastpath`)."""
    if fast_path is None:
        fast_path = loop is not None and fast_path_wanted()
    fast = FastPath(ws) if fast_path else None
    state = ApiState(ws, loop, limits or IngestLimits(), fast)
    if loop is not None:
        loop.on_job = state.job_finished
    app = FastAPI(
        title="alarmsieve",
        version=alarmsieve.__version__,
        description=(
            "Ingest API of alarmsieve: cameras and NVRs post alarm snapshots; verdicts (alert / review / dismiss) "
            "with their reasons are read back. Authenticate with `Authorization: Bearer <token>` "
            "(`alarmsieve token create`)."
        ),
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.api = state
    if fast is not None:
        app.router.on_startup.append(fast.warm)
        app.router.on_shutdown.append(fast.close)
    upload_limit = max(state.limits.max_bytes, state.limits.max_clip_bytes)
    app.add_middleware(BodyLimit, max_bytes=upload_limit + MULTIPART_OVERHEAD)
    bearer = HTTPBearer(auto_error=False, description="an API token, ast_<id>_<secret>")

    # ---- errors ------------------------------------------------------------------------------------
    @app.exception_handler(IngestError)
    async def ingest_error(request: Request, exc: IngestError) -> Response:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse(ErrorBody(error=exc.code, detail=exc.message).model_dump(), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "request"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        detail = "; ".join(parts) + " (see /api/v1/openapi.json)"
        return JSONResponse(ErrorBody(error="invalid_request", detail=detail).model_dump(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401 and request.url.path.startswith(("/review", "/system", "/media")):
            from fastapi.responses import RedirectResponse

            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint {request.url.path}; see /api/v1/openapi.json"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /api/v1/openapi.json"
        return JSONResponse(ErrorBody(error=code, detail=detail).model_dump(), exc.status_code, headers=exc.headers)

    # ---- auth --------------------------------------------------------------------------------------
    def principal(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        token = creds.credentials if creds else request.headers.get("x-api-token") or request.cookies.get(COOKIE)
        if not token:
            raise api_error(
                401, "missing_token", "send `Authorization: Bearer <token>`; create one with `alarmsieve token create`"
            )
        who = state.tokens.verify(token)
        if who is None:
            raise api_error(
                401, "invalid_token", "the token is unknown, malformed or revoked; see `alarmsieve token list`"
            )
        return who

    def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.kind != "operator":
            raise api_error(403, "operator_only", f"token {who.name!r} is a camera token; this needs an operator token")
        return who

    app.state.principal = principal
    app.state.operator = operator

    def check_camera(who: Principal, camera: str, action: str = "post alarms") -> None:
        if not who.may_post_for(camera):
            raise api_error(
                403,
                "camera_forbidden",
                f"token {who.name!r} belongs to camera {who.camera!r} and may only {action} for it, not {camera!r}",
            )

    def rate_limit(who: Principal) -> None:
        wait = state.limiter.take(who.token_id)
        if wait > 0:
            raise IngestError(
                429,
                "rate_limited",
                f"token {who.name!r} is over {state.limits.rate_per_minute} alarms a minute; retry in {wait:.1f}s",
                retry_after=max(1, int(wait + 0.999)),
            )

    def accept(who: Principal, camera: str, data: bytes, **kw: Any) -> AlarmAccepted:
        check_camera(who, camera)
        rate_limit(who)
        try:
            return state.ingestor.accept(camera, data, token_id=who.token_id, **kw)
        except IngestError as exc:
            state.metrics.alarms_rejected.labels(exc.code).inc()
            raise

    # ---- alarms ------------------------------------------------------------------------------------
    @app.post(f"{API}/alarms", status_code=202, responses=ERRORS, tags=["alarms"])
    def post_alarm(
        who: Annotated[Principal, Depends(principal)],
        camera: Annotated[str, Form(min_length=1, max_length=63, description="camera id, e.g. front-door")],
        file: Annotated[
            UploadFile, File(description="the snapshot (JPEG, PNG, BMP, WebP) or clip (MP4, MOV, MKV, WebM, AVI)")
        ],
        time: Annotated[
            datetime | None, Form(description="when the alarm fired (ISO 8601); default: now. EXIF time wins")
        ] = None,
        site: Annotated[str | None, Form(max_length=200, description="site name, for filtering")] = None,
        metadata: Annotated[str | None, Form(description="a JSON object kept with the alarm")] = None,
    ) -> AlarmAccepted:
        """Commit an alarm to ``images`` (a clip: ``videos``) and return its id at once (the verdict comes later)."""
        data = file.file.read(upload_limit + 1)
        meta = parse_metadata(metadata, state.limits)
        return accept(who, camera, data, content_type=file.content_type, when=time, site=site, metadata=meta)

    @app.put(
        f"{API}/cameras/{{camera}}/snapshot",
        status_code=202,
        responses=ERRORS,
        tags=["alarms"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/jpeg", "image/png", "image/bmp", "image/webp", "application/octet-stream")
                },
            }
        },
    )
    async def put_snapshot(
        request: Request,
        who: Annotated[Principal, Depends(principal)],
        camera: str,
        time: Annotated[datetime | None, Query(description="when the alarm fired; default: now")] = None,
    ) -> AlarmAccepted:
        """The simplest camera: PUT the raw image bytes (curl -T snap.jpg); same as POST /alarms."""
        check_camera(who, camera)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > state.limits.max_bytes:
                raise api_error(413, "too_large", f"the upload is over {state.limits.max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        ctype = request.headers.get("content-type")
        return await run_in_threadpool(accept, who, camera, data, content_type=ctype, when=time)

    @app.get(f"{API}/alarms/{{alarm_id:path}}", responses=ERRORS, tags=["alarms"])
    async def get_alarm(
        alarm_id: str,
        who: Annotated[Principal, Depends(principal)],
        wait: Annotated[
            str | None,
            Query(max_length=20, description=f"long-poll until the verdict is ready: 5s, 500ms (≤ {MAX_WAIT_S:.0f}s)"),
        ] = None,
        final: Annotated[
            bool, Query(description="wait for the committed verdict (state done), not a provisional one")
        ] = False,
    ) -> AlarmStatus:
        """The alarm's progress through the stages and, once ready, its verdict (``state``: provisional or done)."""
        camera, name = split_alarm_id(alarm_id)
        check_camera(who, camera, "read alarms")
        deadline = time.monotonic() + parse_wait(wait)
        generation = loop.generation if loop else 0
        future = fast.future(f"{camera}/{name}") if fast is not None and not final else None
        if future is not None and not future.done() and deadline > time.monotonic():
            # This server is judging it now: read the repos meanwhile (a snapshot taken a few milliseconds
            # before the answer, as any is), then add the provisional verdict once it is there.
            reading = asyncio.ensure_future(run_in_threadpool(state.ingestor.committed_status, alarm_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), deadline - time.monotonic())
            status = state.ingestor.with_provisional(await reading)  # 404 for an unknown alarm
        else:
            status = await run_in_threadpool(state.ingestor.status, alarm_id)  # 404 for an unknown alarm

        def ready(s: AlarmStatus) -> bool:
            return s.state == "done" or (s.state == "provisional" and not final)

        while not ready(status) and time.monotonic() < deadline:
            # wake when a job finishes (in-process runner), else look again every 0.25 s
            recheck = min(deadline, time.monotonic() + (1.0 if loop else 0.25))
            while time.monotonic() < recheck and (loop is None or loop.generation == generation):
                await asyncio.sleep(0.005)
            generation = loop.generation if loop else 0
            if await run_in_threadpool(state.ingestor.verdict_ready, alarm_id) or time.monotonic() >= deadline:
                status = await run_in_threadpool(state.ingestor.status, alarm_id)
        return status

    @app.get(f"{API}/verdicts", responses=ERRORS, tags=["verdicts"])
    def list_verdicts(
        who: Annotated[Principal, Depends(principal)],
        device: Annotated[str | None, Query(max_length=63, description="only this camera")] = None,
        since: Annotated[str | None, Query(max_length=40, description="ISO time or 30m / 2h / 7d")] = None,
        verdict: Annotated[str | None, Query(pattern="^(alert|review|dismiss)$")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[ClipVerdictOut | VerdictOut]:
        """Verdicts, newest last, like ``alarmsieve verdicts --json`` (a clip once, with its frames' verdicts);
        a camera token sees its own camera only."""
        from alarmsieve.verdicts import ClipEntry, entry_json
        from alarmsieve.verdicts import list_verdicts as read_entries

        if who.kind == "camera":
            if device and device != who.camera:
                check_camera(who, device, "read verdicts")
            device = who.camera
        entries = read_entries(ws.pfs, device=device, since=parse_since(since))
        if verdict:
            entries = [e for e in entries if (e.clip.verdict if isinstance(e, ClipEntry) else e.verdict) == verdict]
        return [
            ClipVerdictOut.model_validate(entry_json(e))
            if isinstance(e, ClipEntry)
            else VerdictOut.model_validate(entry_json(e))
            for e in entries[-limit:]
        ]

    @app.post(f"{API}/feedback", status_code=201, responses=ERRORS, tags=["feedback"])
    def post_feedback(body: FeedbackIn, who: Annotated[Principal, Depends(operator)]) -> FeedbackOut:
        """Mark a verdict wrong (or right): stored as a labelled example in the ``feedback`` repo."""
        return store_feedback(ws, body, operator=who.name)

    @app.get(f"{API}/status", responses=ERRORS, tags=["system"])
    def status(who: Annotated[Principal, Depends(operator)]) -> StatusOut:
        """Repos, pipelines with their last job and queue, and the runner (like ``alarmsieve status``)."""
        return system_status(state)

    @app.get(f"{API}/health", tags=["system"])
    def health() -> dict[str, bool]:
        """Liveness: 200 while the server runs (and, with ``serve --http``, while its runner loop runs)."""
        ok = loop is None or loop.alive
        return {"ok": ok}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await run_in_threadpool(state.observer.update)
        body = await run_in_threadpool(state.metrics.render)
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    from alarmsieve.api.dashboard import router

    app.include_router(router)
    return app


def system_status(state: ApiState) -> StatusOut:
    """The CLI's `status` model (``Operations.status``) with the HTTP server's own figures added."""
    ws = state.ws
    depth = state.system.queue_depth()
    report = ws.ops.status()
    pipelines = [PipelineStatus(**p.model_dump(), queue_depth=depth.get(p.name)) for p in report.pipelines]
    with Session(state.ingestor.engine) as s:
        received = s.scalar(select(func.count()).select_from(ApiAlarm)) or 0
    loop = state.loop
    return StatusOut(
        repos=[
            RepoStatus(name=r.name, head=r.head, file_count=r.file_count, size_bytes=r.size_bytes)
            for r in ws.pfs.list_repos()
        ],
        pipelines=pipelines,
        problems=report.problems,
        runner=RunnerStatus(
            in_process=loop is not None,
            alive=bool(loop and loop.alive),
            error=repr(loop.error) if loop and loop.error else None,
            worker_restarts=loop.worker_restarts() if loop else {},
        ),
        alarms_received_over_http=received,
    )
