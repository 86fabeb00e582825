"""The ``alarmsieve`` command line: pachctl-like verbs over the embedded workspace.

Every list command takes ``--json`` (one JSON object per line). Errors print one line that says
what is wrong and how to fix it, and exit with status 1 (2 for bad usage).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alarmsieve import __version__

app = typer.Typer(
    help="alarmsieve: verify security-camera alarms with data-versioned, Pachyderm-style pipelines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
create_app = typer.Typer(help="Create a repo or a pipeline.", no_args_is_help=True)
list_app = typer.Typer(help="List repos, commits, files, pipelines, jobs or datums.", no_args_is_help=True)
inspect_app = typer.Typer(help="Show one commit, pipeline or job in detail.", no_args_is_help=True)
put_app = typer.Typer(help="Put files into a repo.", no_args_is_help=True)
get_app = typer.Typer(help="Get a file out of a repo.", no_args_is_help=True)
diff_app = typer.Typer(help="Show what changed between commits.", no_args_is_help=True)
validate_app = typer.Typer(help="Check a pipeline spec without creating it.", no_args_is_help=True)
update_app = typer.Typer(help="Update a pipeline to a new version.", no_args_is_help=True)
delete_app = typer.Typer(
    help="Delete a pipeline, repo or commit (refuses when something depends on it).", no_args_is_help=True
)
stop_app = typer.Typer(help="Stop (pause) a pipeline.", no_args_is_help=True)
start_app = typer.Typer(help="Start (resume) a stopped pipeline.", no_args_is_help=True)
restart_app = typer.Typer(help="Run datums again.", no_args_is_help=True)
rerun_app = typer.Typer(help="Run a job's failed datums again.", no_args_is_help=True)
export_app = typer.Typer(help="Export pipelines in another system's format.", no_args_is_help=True)
for name, sub in [
    ("create", create_app),
    ("list", list_app),
    ("inspect", inspect_app),
    ("put", put_app),
    ("get", get_app),
    ("diff", diff_app),
    ("validate", validate_app),
    ("update", update_app),
    ("delete", delete_app),
    ("stop", stop_app),
    ("start", start_app),
    ("restart", restart_app),
    ("rerun", rerun_app),
    ("export", export_app),
]:
    app.add_typer(sub, name=name)

# Wide when piped (rich assumes 80 columns), so tables in logs and CI stay one row per line.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

JsonFlag = Annotated[bool, typer.Option("--json", help="one JSON object per line")]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    from alarmsieve.errors import AlarmsieveError
    from alarmsieve.evaluate import EvalError
    from alarmsieve.pfs.api import PfsError
    from alarmsieve.pfs.objects import ObjectNotFoundError
    from alarmsieve.pfs.paths import PathError
    from alarmsieve.pps.api import PpsError
    from alarmsieve.pps.spec import SpecError
    from alarmsieve.rules import RulesError
    from alarmsieve.stages.base import StageUsageError
    from alarmsieve.vision.models import ModelChecksumError, ModelNotFoundError
    from alarmsieve.workspace import WorkspaceError

    return (
        AlarmsieveError,
        PfsError,
        PathError,
        PpsError,
        SpecError,
        RulesError,
        WorkspaceError,
        ModelNotFoundError,
        ModelChecksumError,
        EvalError,
        ObjectNotFoundError,
        StageUsageError,
    )


def workspace(must_exist: bool = True) -> Any:
    from alarmsieve.workspace import Workspace

    return Workspace(must_exist=must_exist)


def emit_json(items: list[Any]) -> None:
    for item in items:
        data = item.model_dump(mode="json") if isinstance(item, BaseModel) else item
        sys.stdout.write(json.dumps(data, default=str) + "\n")


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(max(seconds, 0))}s ago"


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def parse_since(text: str | None) -> datetime | None:
    """An ISO time, or a duration back from now such as 30m, 2h, 7d."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1] in units:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: give an ISO time (2026-11-27T10:00) or a duration such as 30m, 2h, 7d", 2)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ---- workspace -------------------------------------------------------------------------------------
@app.command()
def init(
    pipelines: Annotated[Path | None, typer.Option(help="folder of pipeline specs (default: pipelines/)")] = None,
) -> None:
    """Create the workspace ($ALARMSIEVE_HOME, default ./.alarmsieve): repos images and rules, default pipelines."""
    ws = workspace(must_exist=False)
    done = ws.init(pipelines_dir=pipelines)
    for line in done or ["already initialised; nothing to do"]:
        console.print(line)
    console.print(f"workspace: {ws.home}")


# ---- repos, commits, files -------------------------------------------------------------------------
@create_app.command("repo")
def create_repo(name: str, description: Annotated[str, typer.Option("--description", "-d")] = "") -> None:
    """Create a repo."""
    workspace().pfs.create_repo(name, description=description)
    console.print(f"created repo {name}")


@create_app.command("pipeline")
def create_pipeline(
    file: Annotated[str, typer.Option("--file", "-f", help="spec file (JSON or YAML), - for stdin")],
) -> None:
    """Create pipelines from a Pachyderm spec file."""
    ws = workspace()
    for spec in _read_specs(file):
        version, what = ws.pps.create_pipeline(spec, identity=ws.stage_identity(spec), code_dir=_spec_dir(file))
        console.print(f"pipeline {spec.name}: {what} (version {version})")


@update_app.command("pipeline")
def update_pipeline(
    file: Annotated[str, typer.Option("--file", "-f", help="spec file (JSON or YAML), - for stdin")],
    reprocess: Annotated[bool, typer.Option(help="run every datum again with the new version")] = False,
    rules: Annotated[
        str | None,
        typer.Option(
            "--rules",
            help="with --reprocess: rules that re-judge past alarms: first (default: each alarm's own) or head",
        ),
    ] = None,
) -> None:
    """Update pipelines to the spec in FILE; only new data meets the new version unless --reprocess."""
    from alarmsieve.rejudge import parse_choice, set_downstream, with_rejudge_rules

    if rules is not None and not reprocess:
        fail("--rules goes with --reprocess (it says which rules re-judge the alarms run again)", 2)
    choice = parse_choice(rules or "first")
    ws = workspace()
    updated = []
    for spec in _read_specs(file):
        if reprocess:
            spec = with_rejudge_rules(spec, choice)
        identity = ws.stage_identity(spec)
        version, what = ws.pps.create_pipeline(
            spec, update=True, reprocess=reprocess, identity=identity, code_dir=_spec_dir(file)
        )
        note = (
            "unchanged: same spec, stage code and model as the current version; no new version, nothing reprocessed"
            if what == "unchanged"
            else what
        )
        console.print(f"pipeline {spec.name}: {note} (version {version})")
        updated.append(spec.name)
    if reprocess:  # the assess pipelines downstream judge the reprocessed alarms with the chosen rules
        for name, version, what in set_downstream(ws.pps, updated, choice):
            console.print(f"pipeline {name}: {what}: past alarms re-judged with --rules {choice} (version {version})")


def _spec_dir(file: str) -> Path:
    """Where a spec's relative script names (``python3 thumbs.py``) resolve: its folder; stdin: here."""
    return Path.cwd() if file == "-" else Path(file).resolve().parent


def _read_specs(file: str) -> list[Any]:
    from alarmsieve.pps.spec import load_spec_documents

    if file == "-":
        return load_spec_documents(sys.stdin.read(), "<stdin>")
    path = Path(file)
    if not path.is_file():
        fail(f"spec file {file} not found; give the path of a JSON or YAML pipeline spec", 2)
    return load_spec_documents(path.read_text(), str(path))


@validate_app.command("pipeline")
def validate_pipeline(
    file: Annotated[str, typer.Option("--file", "-f", help="spec file (JSON or YAML), - for stdin")],
) -> None:
    """Check a spec against Pachyderm's schema and alarmsieve's supported fields (exit 0 when valid)."""
    for spec in _read_specs(file):
        console.print(f"pipeline {spec.name}: valid")


@put_app.command("file")
def put_file(
    target: Annotated[str, typer.Argument(help="REPO@BRANCH:/path")],
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="local file, - for stdin, or s3://BUCKET/KEY")
    ] = None,
    recursive: Annotated[
        str | None,
        typer.Option("--recursive", "-r", help="put a whole folder (or every object under s3://BUCKET/PREFIX/)"),
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m")] = "",
) -> None:
    """Put a file (or a folder with -r) into a repo, as one atomic commit."""
    from alarmsieve.pfs.paths import parse_file_ref

    ref = parse_file_ref(target)
    if (file is None) == (recursive is None):
        fail("give exactly one of -f FILE (or -f - for stdin) and -r DIR", 2)
    ws = workspace()
    builder = ws.pfs.start_commit(ref.repo, ref.ref, description=message)
    count = 0
    if (recursive or file or "").startswith("s3://"):
        from alarmsieve.pfs.objects_s3 import S3SourceError, list_s3_prefix, open_s3_object, s3_client

        try:  # bodies stream from S3 into the object store (spooled to hash them); nothing is held whole
            client = s3_client()
            if recursive is not None:
                bucket = recursive.removeprefix("s3://").split("/", 1)[0]
                for rel, key in list_s3_prefix(client, recursive):
                    builder.put_stream(ref.path.rstrip("/") + "/" + rel, open_s3_object(client, f"s3://{bucket}/{key}"))
                    count += 1
            else:
                name = (file or "").rstrip("/").rsplit("/", 1)[-1]
                dest = ref.path if not ref.path.endswith("/") and ref.path != "/" else f"{ref.path.rstrip('/')}/{name}"
                builder.put_stream(dest, open_s3_object(client, file or ""))
                count = 1
        except S3SourceError as exc:
            fail(f"{'-r' if recursive else '-f'} {exc}", 2)
    elif recursive is not None:
        folder = Path(recursive)
        if not folder.is_dir():
            fail(f"-r {recursive}: not a folder", 2)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            dest = ref.path.rstrip("/") + "/" + path.relative_to(folder).as_posix()
            builder.put_local_file(dest, path)
            count += 1
    elif file == "-":
        dest = ref.path
        builder.put_stream(dest, sys.stdin.buffer)
        count = 1
    else:
        source = Path(file or "")
        if not source.is_file():
            fail(f"-f {file}: no such file", 2)
        dest = ref.path if not ref.path.endswith("/") and ref.path != "/" else f"{ref.path.rstrip('/')}/{source.name}"
        builder.put_local_file(dest, source)
        count = 1
    if ref.repo == "rules":  # a bad rules commit is refused before it can take effect
        from alarmsieve.rules.repo import check_rules_change

        puts = {path: ws.pfs.objects.get_bytes(sha) for path, sha in builder.pending_puts().items()}
        check_rules_change(ws.pfs, puts)
    commit = builder.finish()
    console.print(f"{ref.repo}@{commit.id}: {count} file(s) put")


@list_app.command("repo")
def list_repo(as_json: JsonFlag = False) -> None:
    """List repos."""
    repos = workspace().pfs.list_repos()
    if as_json:
        return emit_json(repos)
    table = Table("NAME", "CREATED", "FILES", "SIZE", "HEAD", "DESCRIPTION", box=None)
    for r in repos:
        table.add_row(
            r.name, ago(r.created_at), str(r.file_count), size_text(r.size_bytes), r.head or "-", r.description
        )
    console.print(table)


@list_app.command("commit")
def list_commit(
    repo: str, limit: Annotated[int, typer.Option("--limit", "-n")] = 50, as_json: JsonFlag = False
) -> None:
    """List the commits of a repo, newest first."""
    commits = workspace().pfs.list_commits(repo.split("@")[0], limit=limit)
    if as_json:
        return emit_json(commits)
    table = Table("COMMIT", "BRANCH", "ORIGIN", "CREATED", "+FILES", "-FILES", "DESCRIPTION", box=None)
    for c in commits:
        table.add_row(
            c.id, c.branch, c.origin, ago(c.created_at), str(c.files_added), str(c.files_removed), c.description
        )
    console.print(table)


@list_app.command("file")
def list_file(
    target: Annotated[str, typer.Argument(help="REPO@BRANCH_OR_COMMIT:/path")], as_json: JsonFlag = False
) -> None:
    """List the files of a directory in a commit."""
    from alarmsieve.pfs.paths import parse_file_ref

    ref = parse_file_ref(target)
    files = workspace().pfs.list_files(ref.repo, ref.ref, ref.path)
    if as_json:
        return emit_json(files)
    table = Table("NAME", "TYPE", "SIZE", "SHA256", box=None)
    for f in files:
        table.add_row(f.path, f.type, size_text(f.size), (f.sha256 or "")[:16])
    console.print(table)


@get_app.command("file")
def get_file(
    target: Annotated[str, typer.Argument(help="REPO@BRANCH_OR_COMMIT:/path")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Print a file's content (or write it with -o)."""
    from alarmsieve.pfs.paths import parse_file_ref

    ref = parse_file_ref(target)
    data = workspace().pfs.get_file(ref.repo, ref.ref, ref.path)
    if output:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@inspect_app.command("commit")
def inspect_commit(
    target: Annotated[str, typer.Argument(help="REPO@BRANCH_OR_COMMIT")], as_json: JsonFlag = False
) -> None:
    """Show a commit: parent, origin, provenance, size."""
    repo, _, ref = target.partition("@")
    pfs = workspace().pfs
    info = pfs.inspect_commit(repo, ref or "master")
    if as_json:
        return emit_json([info])
    rows = [
        ("Commit", f"{info.repo}@{info.id}"),
        ("Branch", info.branch),
        ("Parent", info.parent or "-"),
        ("Origin", info.origin),
        ("Created", f"{info.created_at.isoformat()} ({ago(info.created_at)})"),
        ("Files", f"+{info.files_added} -{info.files_removed} ({size_text(info.size_bytes)} added)"),
        ("Job", info.job_id or "-"),
        ("Pipeline version", info.pipeline_version or "-"),
    ]
    for upstream in info.provenance:
        try:
            up = pfs.get_commit(upstream)
            rows.append(("Provenance", f"{up.repo}@{up.id}"))
        except Exception:
            rows.append(("Provenance", upstream))
    for key, value in rows:
        console.print(f"[bold]{key}:[/] {value}", highlight=False)


@diff_app.command("file")
def diff_file(
    new: Annotated[str, typer.Argument(help="REPO@COMMIT[:/path] (the newer side)")],
    old: Annotated[str | None, typer.Argument(help="REPO@COMMIT (default: the parent of NEW)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the files added, modified and removed between two commits of a repo."""
    from alarmsieve.pfs.paths import parse_file_ref

    ref = parse_file_ref(new)
    pfs = workspace().pfs
    info = pfs.inspect_commit(ref.repo, ref.ref)
    old_ref = parse_file_ref(old).ref if old else info.parent
    changes = [
        c for c in pfs.diff(ref.repo, old_ref, info.id) if ref.path == "/" or c.path.startswith(ref.path.rstrip("/"))
    ]
    if as_json:
        return emit_json(changes)
    marks = {"added": "[green]+[/]", "removed": "[red]-[/]", "modified": "[yellow]~[/]"}
    for change in changes:
        console.print(f"{marks[change.op]} {change.path}", highlight=False)
    if not changes:
        console.print("no changes")


# ---- pipelines, jobs, datums, logs -----------------------------------------------------------------
@list_app.command("pipeline")
def list_pipeline(as_json: JsonFlag = False) -> None:
    """List pipelines with their state and last job."""
    pipelines = workspace().pps.list_pipelines()
    if as_json:
        return emit_json(pipelines)
    table = Table("NAME", "VERSION", "STATE", "INPUT", "GLOB", "WORKERS", "LAST JOB", box=None)
    for p in pipelines:
        last = f"{p.last_job.state} {ago(p.last_job.created_at)}" if p.last_job else "-"
        table.add_row(
            p.name, str(p.version), p.state, ", ".join(p.input_repos), ", ".join(p.glob), str(p.parallelism), last
        )
    console.print(table)


@inspect_app.command("pipeline")
def inspect_pipeline(
    name: str,
    as_json: JsonFlag = False,
    diff: Annotated[
        str | None, typer.Option("--diff", help="OLD[:NEW] versions to diff (default: the last two)")
    ] = None,
) -> None:
    """Show a pipeline: spec, version, state, last job, version history and the diff of the last change."""
    ws = workspace()
    info = ws.pps.inspect_pipeline(name)
    versions = ws.pps.versions(name)
    if diff:
        old_text, _, new_text = diff.partition(":")
        if not old_text.isdigit() or (new_text and not new_text.isdigit()):
            fail(f"--diff {diff!r}: give version numbers, e.g. --diff 1:3 or --diff 2", 2)
        old_v, new_v = int(old_text), int(new_text) if new_text else info.version
    else:
        old_v, new_v = max(1, info.version - 1), info.version
    diff_text = ws.pps.version_diff(name, old_v, new_v) if old_v != new_v else ""
    if as_json:
        data = info.model_dump(mode="json")
        data["versions"] = [v.model_dump(mode="json", exclude={"spec"}) for v in versions]
        data["diff"] = diff_text
        return emit_json([data])
    console.print(f"[bold]Pipeline:[/] {info.name}  version {info.version}  state {info.state}", highlight=False)
    if info.reason:
        console.print(f"[bold]Reason:[/] {info.reason}", highlight=False)
    from alarmsieve.pps.code import is_code_key

    shown_identity = {k: v for k, v in info.identity.items() if not is_code_key(k)}
    if shown_identity:
        console.print(
            "[bold]Identity:[/] " + ", ".join(f"{k}={v}" for k, v in sorted(shown_identity.items())), highlight=False
        )
    for path, sha256 in sorted(info.code_files.items()):
        console.print(f"[bold]Code file:[/] {path} sha256 {sha256}", highlight=False)
    console.print(f"[bold]Input:[/] {', '.join(info.input_repos)}  glob {', '.join(info.glob)}", highlight=False)
    console.print(f"[bold]Workers:[/] {info.parallelism}", highlight=False)
    if info.last_job:
        j = info.last_job
        console.print(
            f"[bold]Last job:[/] {j.id} {j.state} processed {j.processed} skipped {j.skipped} failed {j.failed}",
            highlight=False,
        )
    console.print("[bold]History:[/]", highlight=False)
    for v in versions:
        console.print(f"  v{v.version}  {v.created_at.isoformat(timespec='seconds')}  {v.cause}", highlight=False)
    if diff_text:
        console.print(f"[bold]Diff v{old_v} -> v{new_v}:[/]", highlight=False)
        console.print(diff_text, highlight=False, markup=False)
    elif old_v != new_v:
        console.print(f"[bold]Diff v{old_v} -> v{new_v}:[/] same spec and identity (a new datum salt)", highlight=False)
    console.print_json(json.dumps(info.spec))


@list_app.command("job")
def list_job(
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    jobs = workspace().pps.list_jobs(pipeline, limit)
    if as_json:
        return emit_json(jobs)
    table = Table("JOB", "PIPELINE", "STATE", "STARTED", "PROCESSED", "SKIPPED", "FAILED", "REMOVED", box=None)
    for j in jobs:
        table.add_row(
            j.id,
            f"{j.pipeline}@v{j.version}",
            j.state,
            ago(j.created_at),
            str(j.processed),
            str(j.skipped),
            str(j.failed),
            str(j.removed),
        )
    console.print(table)


@inspect_app.command("job")
def inspect_job(job_id: str, as_json: JsonFlag = False) -> None:
    """Show a job: state, timings, datum counts, reason."""
    job = workspace().pps.inspect_job(job_id)
    if as_json:
        return emit_json([job])
    took = f"{(job.finished_at - job.created_at).total_seconds():.2f}s" if job.finished_at else "running"
    for key, value in [
        ("Job", job.id),
        ("Pipeline", f"{job.pipeline} (version {job.version})"),
        ("State", job.state),
        ("Started", f"{job.created_at.isoformat()} ({ago(job.created_at)})"),
        ("Duration", f"{took} (planning {job.plan_seconds * 1000:.1f} ms)"),
        (
            "Datums",
            f"{job.datums_total} total: {job.processed} processed, {job.skipped} skipped, "
            f"{job.failed} failed, {job.recovered} recovered, {job.removed} removed",
        ),
        ("Inputs", ", ".join(f"{k}@{v}" for k, v in job.input_commits.items())),
        ("Output commit", job.output_commit or "-"),
        ("Reason", job.reason or "-"),
    ]:
        console.print(f"[bold]{key}:[/] {value}", highlight=False)


@list_app.command("datum")
def list_datum(
    target: Annotated[str, typer.Argument(help="PIPELINE[@JOB] (default: the pipeline's last job)")],
    state: Annotated[
        str | None, typer.Option("--state", help="only datums in this state (success, failed, recovered)")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="at most this many")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the datums a job processed, with state, attempts and failure reason."""
    pipeline, _, job = target.partition("@")
    datums = workspace().pps.list_datums(pipeline, job or None, state=state, limit=limit)
    if as_json:
        return emit_json(datums)
    table = Table("DATUM", "STATE", "ATTEMPTS", "INPUT", "TIME", "REASON", box=None)
    for d in datums:
        inputs = ", ".join(f"{name}:{root}" for name, root in d.inputs)
        table.add_row(d.datum_id[:16], d.state, str(d.attempts), inputs, f"{d.seconds * 1000:.0f} ms", d.reason)
    console.print(table)


@app.command()
def logs(
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p")] = None,
    job: Annotated[str | None, typer.Option("--job", "-j")] = None,
    datum: Annotated[str | None, typer.Option("--datum", "-d")] = None,
    worker: Annotated[str | None, typer.Option("--worker", "-w", help="worker id (or a prefix)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m / 2h / 7d")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C to stop)")] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", help="at most this many lines (newest) before following")] = 0,
) -> None:
    """Print log lines as JSON, each with its pipeline, job, datum and worker ids (the stages' prints too)."""
    if not (pipeline or job or datum or worker or since or follow):
        fail("give --pipeline, --job, --datum, --worker, --since or --follow", 2)
    pps = workspace().pps
    when = parse_since(since)
    lines = pps.logs(pipeline, job, datum, worker=worker, since=when)
    if tail:
        lines = lines[-tail:]
    last_id = 0
    try:
        while True:
            for line in lines:
                sys.stdout.write(json.dumps(line.model_dump(mode="json", exclude={"id"})) + "\n")
                last_id = max(last_id, line.id)
            sys.stdout.flush()
            if not follow:
                return
            time.sleep(0.5)
            lines = pps.logs(pipeline, job, datum, worker=worker, since=when, after_id=last_id)
    except KeyboardInterrupt:
        return


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def job_started(self, pipeline: str, job_id: str, to_run: int) -> None:
        self.tasks[pipeline] = self.progress.add_task(f"{pipeline} job {job_id[:8]}", total=max(to_run, 0))

    def datum_done(self, pipeline: str, ok: bool) -> None:
        self.progress.advance(self.tasks[pipeline])

    def job_finished(self, job: Any) -> None:
        task = self.tasks.get(job.pipeline)
        if task is not None:
            self.progress.update(
                task,
                description=f"{job.pipeline} job {job.id[:8]} {job.state}"
                + (f" ({job.failed} failed)" if job.failed else ""),
            )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        disable=not err_console.is_terminal and False,
    )


@app.command()
def run(as_json: JsonFlag = False) -> None:
    """Process everything pending and return when idle; exit 1 when a job failed or could not run."""
    ws = workspace()
    with _progress() as progress, ws.runner(_RichProgress(progress)) as runner:
        jobs = runner.run_until_idle()
    bad = [j for j in jobs if j.state != "success"]
    if as_json:
        emit_json(jobs)
    else:
        which = ": " + ", ".join(f"{j.pipeline} {j.state}" for j in bad) if bad else ""
        console.print(f"{len(jobs)} job(s) run, {len(bad)} failed or errored{which}", highlight=False)
        for j in bad:
            console.print(f"  {j.pipeline} job {j.id} {j.state}: {j.reason}  (see {_job_hint(j)})", highlight=False)
    if bad:
        raise typer.Exit(1)


def _job_hint(job: Any) -> str:
    """Where to look next: a failed job has failed datums; a job that could not run has none, only logs."""
    if job.state == "failure":
        return f"`alarmsieve list datum {job.pipeline}@{job.id} --state failed`"
    return f"`alarmsieve inspect job {job.id}` and `alarmsieve logs --job {job.id}`"


@app.command()
def serve(
    interval: Annotated[float, typer.Option(help="seconds between looks for new commits")] = 1.0,
    once: Annotated[bool, typer.Option(help="stop after the first idle point (for scripts)")] = False,
    http: Annotated[bool, typer.Option("--http", help="also serve the HTTP API, dashboard and /metrics")] = False,
    host: Annotated[str, typer.Option(help="address the HTTP server listens on (with --http)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the HTTP server (with --http; 0: any free port)")] = 8080,
    ingest: Annotated[
        Path | None,
        typer.Option(help="also commit what cameras upload to this folder (<camera>/<file>), as `ingest --watch`"),
    ] = None,
    ingest_remove: Annotated[
        bool, typer.Option("--ingest-remove", help="with --ingest: delete each file once a commit holds it")
    ] = False,
) -> None:
    """Stay up and process new commits as they land (Ctrl-C to stop); --http also serves the API."""
    ws = workspace()
    folder_pass = _folder_pass(ws, ingest, ingest_remove) if ingest is not None else None
    if http:
        if once:
            fail("--once and --http do not go together: the HTTP server stays up until Ctrl-C", 2)
        return _serve_http(ws, interval, host, port, folder_pass)
    also = f" and {ingest} for uploads" if ingest is not None else ""
    console.print(f"serving {ws.home}; watching for new commits{also} every {interval}s", highlight=False)
    with ws.runner(wait=False) as runner:
        try:
            while True:
                if folder_pass is not None:
                    folder_pass()
                for job in runner.run_until_idle():
                    console.print(f"{job.pipeline} job {job.id}: {job.state} ({job.processed} processed)")
                end_quiet_incidents(ws)
                if once:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            console.print("stopped")


def _folder_pass(ws: Any, folder: Path, remove: bool) -> Callable[[], None]:
    """One pass over a watched upload folder per serve round; a bad pass is said and serving goes on."""
    from alarmsieve.errors import AlarmsieveError
    from alarmsieve.ingest import IngestMemo, ingest_folder

    if not folder.is_dir():
        fail(f"--ingest {folder}: no such folder; give the folder cameras upload to (<camera>/<file>)")
    memo = IngestMemo()
    reported: set[str] = set()

    def one_pass() -> None:
        try:
            result = ingest_folder(ws.pfs, folder, remove=remove, memo=memo)
        except (AlarmsieveError, OSError) as exc:
            console.print(f"[yellow]ingest {folder}: {exc}[/yellow]", highlight=False)
            return
        for key, reason in result.skipped:
            if key not in reported:  # a stray file is said once, not every round
                reported.add(key)
                err_console.print(f"skipped {key}: {reason}", highlight=False)
        for target, commit in result.commits.items():
            console.print(f"ingested {result.added_to[target]} file(s) from {folder}: {target}@{commit}")

    return one_pass


def end_quiet_incidents(ws: Any) -> None:
    """Publish the MQTT ``end`` of incidents that went quiet; a bad configuration never stops serving."""
    from alarmsieve.errors import AlarmsieveError
    from alarmsieve.notify.sweep import end_quiet_incidents as sweep

    try:
        for result in sweep(ws.pfs, ws.catalog_url, ws.outbox):
            if result.state == "sent":
                console.print(f"incident end published: {result.key} ({result.channel})")
    except AlarmsieveError as exc:
        console.print(f"[yellow]incident ends not published: {exc}[/yellow]")


def _serve_http(ws: Any, interval: float, host: str, port: int, folder_pass: Callable[[], None] | None = None) -> None:
    """uvicorn in this thread (it handles Ctrl-C); the runner loop in a background thread."""
    import uvicorn

    from alarmsieve.api.app import create_app
    from alarmsieve.api.server import PipelineLoop, bind_socket

    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop what uses it")
    loop = PipelineLoop(ws, interval=interval, before_round=folder_pass)
    app_ = create_app(ws, loop=loop)
    loop.start(
        report=lambda job: console.print(f"{job.pipeline} job {job.id}: {job.state} ({job.processed} processed)")
    )
    bound = sock.getsockname()
    console.print(
        f"serving {ws.home}; HTTP API on http://{host}:{bound[1]}/api/v1 (dashboard /review, metrics /metrics); "
        f"runner watching every {interval}s",
        highlight=False,
    )
    server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])  # re-raises Ctrl-C as KeyboardInterrupt once it has shut down
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        sock.close()
        console.print("stopped")


# ---- verdicts and evaluation -----------------------------------------------------------------------
@app.command()
def verdicts(
    device: Annotated[str | None, typer.Option("--device", help="only this camera id")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m / 2h / 7d")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List verdicts: device, time, verdict, reasons, detections, model and rules version; clips with their frames."""
    from alarmsieve.verdicts import entry_json, list_verdicts

    entries = list_verdicts(workspace().pfs, device=device, since=parse_since(since))
    if as_json:
        return emit_json([entry_json(e) for e in entries])
    console.print(verdict_table(entries))


def verdict_table(records: list[Any]) -> Table:
    """Snapshots one row each; a clip (``verdicts.ClipEntry``) a row, then one indented row per frame."""
    from alarmsieve.verdicts import ClipEntry, shown_time

    colours = {"alert": "bold red", "review": "yellow", "dismiss": "green"}
    table = Table("CAMERA", "FILE", box=None)
    table.add_column("TIME (camera's local)", no_wrap=True)  # one line: date, time, offset and zone
    for title in ("OBJECTS", "VERDICT", "REASON"):
        table.add_column(title)

    def objects_of(r: Any) -> str:
        return ", ".join(f"{d.label} {d.score:.2f}" for d in r.detections) or "-"

    for r in records:
        if isinstance(r, ClipEntry):  # a clip and its frames
            c = r.clip
            table.add_row(
                c.camera,
                f"{c.clip.rsplit('/', 1)[-1]} (clip, {len(r.frames)} frames)",
                shown_time(r),
                ", ".join(f"{d.label} {d.score:.2f}" for d in c.detections if d.kept) or "-",
                f"[{colours[c.verdict]}]{c.verdict}[/]",
                "; ".join(c.reasons[:2]),
            )
            for f in r.frames:
                ref = f.clip
                decided = " (decided)" if f.alarm == c.deciding_frame else ""
                table.add_row(
                    "",
                    f"  {ref.offset_s:6.1f}s {'+'.join(ref.reasons)}{decided}",
                    "",
                    objects_of(f),
                    f"[{colours[f.verdict]}]{f.verdict}[/]",
                    f.reasons[0] if f.reasons else "",
                )
            continue
        name = r.alarm.rsplit("/", 1)[-1]
        if r.clip is not None:  # a frame whose clip has no clip verdict yet
            name = f"{r.clip.clip.rsplit('/', 1)[-1]} @ {r.clip.offset_s:.1f}s"
        table.add_row(
            r.camera,
            name,
            shown_time(r) + (" (!)" if r.time_note else ""),
            objects_of(r),
            f"[{colours[r.verdict]}]{r.verdict}[/]",
            r.reasons[0] if r.reasons else "",
        )
    return table


@app.command("eval")
def eval_command(
    images: Annotated[Path, typer.Option(help="folder of images")],
    labels: Annotated[
        Path, typer.Option(help="labels: a CSV (file,objects or file,person[,condition]) or a YOLO .txt folder")
    ],
    threat_labels: Annotated[
        str | None, typer.Option(help="comma-separated; default: the labels rules alert on")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the pipeline on a labelled set: missed threats and suppressed false alarms (per condition too)."""
    from alarmsieve.commands.quality import print_conditions, warn_problems
    from alarmsieve.config import load_settings
    from alarmsieve.evaluate import load_label_set, run_eval

    wanted = [t.strip() for t in threat_labels.split(",") if t.strip()] if threat_labels else None
    label_set = load_label_set(images, labels)
    warn_problems(label_set.problems)
    with _progress() as progress:
        report = run_eval(
            images,
            labels,
            base=load_settings(),
            threat_labels=wanted,
            progress=_RichProgress(progress),
            label_set=label_set,
        )
    if as_json:
        sys.stdout.write(report.model_dump_json() + "\n")
        return
    console.print(
        f"[bold]{report.images} images[/]: {report.threats} threats ({', '.join(report.threat_labels)}), "
        f"{report.calm} calm",
        highlight=False,
    )
    console.print(
        f"missed threats: {report.missed}/{report.threats} ({report.missed_rate:.1%})   "
        f"suppression: {report.suppressed}/{report.calm} calm images dismissed ({report.suppression:.1%})   "
        f"operator load on calm images: {report.reviews_on_calm} reviews, {report.alerts_on_calm} alerts",
        highlight=False,
    )
    if report.recall is not None and report.alerted is not None:
        console.print(
            f"recall (alert or review): {report.recall.text()}   alerted: {report.alerted.text()}", highlight=False
        )
    print_conditions(report)
    for title, items in (("missed threats", report.misses), ("false alarms", report.false_alarms)):
        if items:
            console.print(f"[bold]{title}:[/]")
            for o in items:
                console.print(
                    f"  {o.file} [{', '.join(o.objects)}] -> {o.verdict}: {'; '.join(o.reasons[:2])}",
                    highlight=False,
                    markup=False,  # "[person]" is text, not a rich tag
                )


# ---- stage runtime and demo ------------------------------------------------------------------------
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def stage(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="validate, detect, assess, notify, noop")],
    pfs: Annotated[Path, typer.Option(help="datum root (Pachyderm: /pfs)", envvar="PFS_ROOT")] = Path("/pfs"),
) -> None:
    """Run one stage on the datum laid out at PFS (how the stages run inside a Pachyderm worker).
    `alarmsieve stage NAME --help` lists the stage's own options."""
    import os

    from alarmsieve.config import load_settings
    from alarmsieve.stages.base import DatumContext, StageServices
    from alarmsieve.stages.registry import build_stage, stage_class

    # --help is the stage's, not this command's: `stage detect --help` lists the detect options
    if name in ("--help", "-h"):
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if "--help" in ctx.args or "-h" in ctx.args:
        parser = getattr(stage_class(name), "argument_parser", None)
        typer.echo(parser().format_help() if parser else f"stage {name} takes no options of its own")
        raise typer.Exit(0)

    settings = load_settings()
    services = StageServices(
        workspace=settings.resolved_home,
        catalog_url=settings.resolved_catalog_url,
        model_dir=settings.model_dir,
        model_cache=settings.model_cache,
    )
    built = build_stage(name, list(ctx.args), services)
    (pfs / "out").mkdir(parents=True, exist_ok=True)
    built.process(
        DatumContext(
            pfs=pfs,
            pipeline=os.environ.get("PPS_PIPELINE_NAME", name),
            job_id=os.environ.get("PACH_JOB_ID", ""),
            datum_id=os.environ.get("PACH_DATUM_ID", ""),
        )
    )


@app.command()
def demo(
    report: Annotated[Path, typer.Option(help="where to write the HTML report")] = Path("report.html"),
    images: Annotated[Path | None, typer.Option(help="sample photos folder (default: scikit-image's data)")] = None,
) -> None:
    """Initialise the workspace, put sample alarms from three cameras, run every pipeline, report."""
    from alarmsieve.report import DEMO_ALARMS, demo_sources, write_report
    from alarmsieve.verdicts import read_verdicts

    ws = workspace(must_exist=False)
    for line in ws.init():
        console.print(line)
    sources = demo_sources(images)
    builder = ws.pfs.start_commit("images", description="demo alarms")
    for camera, file in DEMO_ALARMS:
        builder.put_local_file(f"/{camera}/{file}", sources[file])
    commit = builder.finish()
    console.print(f"put {len(DEMO_ALARMS)} alarms from 3 cameras into images@{commit.id}")
    started = time.perf_counter()
    with _progress() as progress, ws.runner(_RichProgress(progress)) as runner:
        jobs = runner.run_until_idle()
    took = time.perf_counter() - started
    records = read_verdicts(ws.pfs)
    console.print(verdict_table(records))
    counts = {v: sum(1 for r in records if r.verdict == v) for v in ("alert", "review", "dismiss")}
    outbox = sorted(ws.outbox.glob("*.eml")) if ws.outbox.is_dir() else []
    console.print(
        f"{len(records)} alarms verified in {took:.1f}s ({len(jobs)} jobs): {counts['alert']} alert, "
        f"{counts['review']} review, {counts['dismiss']} dismiss; {len(outbox)} notification(s) in {ws.outbox}",
        highlight=False,
    )
    write_report(ws.pfs, records, report)
    console.print(f"report: {report.resolve()}")


def main() -> None:
    try:
        app()
    except Exception as exc:
        # the error classes are imported only when something failed: start-up stays fast
        if not isinstance(exc, _known_errors()):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


@app.callback(invoke_without_command=True)
def _version(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="where workers run: local (processes, default) or ray; = ALARMSIEVE_EXECUTOR"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="--executor ray: auto or HOST:PORT; = ALARMSIEVE_RAY_ADDRESS")
    ] = None,
) -> None:
    if version:
        console.print(f"alarmsieve {__version__}")
        raise typer.Exit()
    # The flags win over the environment: settings are read from it when a command opens the workspace.
    if executor is not None:
        if executor not in ("local", "ray"):
            fail(f"--executor {executor}: choose local (worker processes) or ray (pip install 'alarmsieve[ray]')", 2)
        os.environ["ALARMSIEVE_EXECUTOR"] = executor
    if ray_address is not None:
        os.environ["ALARMSIEVE_RAY_ADDRESS"] = ray_address


# Command groups in their own modules register themselves on the apps above.
from alarmsieve.commands import load_all  # noqa: E402

load_all()
