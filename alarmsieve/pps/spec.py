"""Pachyderm pipeline specs: load, normalise, validate against Pachyderm's schema, canonicalise.

A spec goes through four steps (docs/pipeline-spec.md says the same for users):

1. load: JSON or YAML text, one or several documents;
2. normalise: snake_case keys -> camelCase, 1.x `atom` -> `pfs`, durations -> seconds, Pachyderm's
   zero values (null, "", 0) -> absent; fields alarmsieve does not implement are collected here and
   refused by name, unless they hold only an empty or default value;
3. validate the normalised document against Pachyderm's own JSON schema (shipped in `schema/`);
4. build the frozen pydantic model, which checks what the schema cannot (names, globs, one input kind,
   unique input names).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import jsonschema.exceptions
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alarmsieve.pps.glob import compile_glob

__all__ = [
    "Input",
    "ParallelismSpec",
    "PfsInput",
    "PipelineSpec",
    "SpecError",
    "Transform",
    "load_spec_documents",
    "load_spec_file",
    "load_spec_text",
    "parse_spec",
    "spec_fingerprint",
    "to_pachyderm",
    "validate_against_schema",
]

DOCS = "docs/pipeline-spec.md"
SCHEMA_FILE = "CreatePipelineRequest.schema.json"
MAX_NAME_LENGTH = 63


class SpecError(ValueError):
    """A spec that alarmsieve cannot run: names the source, the field, the reason and the fix."""

    def __init__(self, source: str, field: str, reason: str, fix: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        self.fix = fix
        super().__init__(f"{source}: {field}: {reason}. Fix: {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error intact across process boundaries (workers pickle exceptions).
        return (SpecError, (self.source, self.field, self.reason, self.fix))


# --------------------------------------------------------------------------------------------------
# Models


_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


def _check_name(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} {value!r} has {len(value)} characters; at most {MAX_NAME_LENGTH} are allowed")
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} may contain only letters, digits, '-' and '_'")
    return value


def _custom_error(msg: str, at: str = "", fix: str = "") -> PydanticCustomError:
    # `at` is a path below the failing model, `fix` overrides the generic advice; both travel in ctx.
    return PydanticCustomError("alarmsieve_spec", "{msg}", {"msg": msg, "at": at, "fix": fix})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PfsInput(_Model):
    """A `pfs` input: the files of `repo`@`branch`, cut into datums by `glob`, mounted at /pfs/<name>."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    repo: str
    branch: str = "master"
    glob: str
    # join / group inputs: a template of the glob's capture groups ($1, ${2}) that keys the datum
    join_on: str = Field(default="", alias="joinOn")
    outer_join: bool = Field(default=False, alias="outerJoin")
    group_by: str = Field(default="", alias="groupBy")

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_repo(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("repo"), str):
            try:
                _check_name(data["repo"], "repo name")
            except ValueError as exc:  # report it at `repo`, where it was written
                raise _custom_error(str(exc), at="repo") from None
            return {**data, "name": data["repo"]}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        _check_name(value, "input name")
        if value == "out":
            raise ValueError("input name 'out' is taken by the output directory /pfs/out")
        return value

    @field_validator("repo")
    @classmethod
    def _valid_repo(cls, value: str) -> str:
        return _check_name(value, "repo name")

    @field_validator("branch")
    @classmethod
    def _valid_branch(cls, value: str) -> str:
        return _check_name(value, "branch name")

    @field_validator("glob")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        compile_glob(value)  # ValueError names what is wrong
        return value


_INPUT_KINDS = ("pfs", "cross", "union", "join", "group", "cron")

_CRON_NAMED = {"@hourly": 3600, "@daily": 86400, "@midnight": 86400, "@weekly": 7 * 86400}


def cron_interval(spec: str) -> float | None:
    """Seconds between ticks of an interval spec (`@every <Go duration>`, `@hourly`, `@daily`, `@weekly`);
    None for a five-field cron expression (minute hour day-of-month month day-of-week, UTC)."""
    text = spec.strip()
    if text in _CRON_NAMED:
        return float(_CRON_NAMED[text])
    if text.startswith("@every "):
        try:
            seconds = _parse_duration(text.removeprefix("@every "))
        except ValueError:
            seconds = Decimal(0)
        if seconds > 0:
            return float(seconds)
    else:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
            return None
        except CronSimError as exc:
            reason = f" ({exc})"
        raise ValueError(
            f"cron spec {spec!r} is not valid{reason}; use five fields (e.g. `*/15 * * * *`), "
            "`@every <duration>` (e.g. `@every 60s`), `@hourly`, `@daily` or `@weekly`"
        )
    raise ValueError(f"cron spec {spec!r}: the duration must be positive, e.g. `@every 60s`")


def cron_next(spec: str, after: datetime) -> datetime:
    """The first tick of `spec` after `after` (UTC)."""
    interval = cron_interval(spec)
    if interval is not None:
        return after + timedelta(seconds=interval)
    from cronsim import CronSim

    return next(CronSim(spec.strip(), after.astimezone(UTC)))


class CronInput(_Model):
    """Pachyderm's cron input: each tick commits a file named after the tick's time to its repo."""

    name: str
    spec: str
    repo: str = ""  # default "<pipeline>_<name>", filled in by the pipeline
    overwrite: bool = False  # True: each tick replaces the previous file

    @field_validator("name", "repo")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "cron name") if value else value

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        cron_interval(value)
        return value

    def as_pfs(self) -> PfsInput:
        """The cron repo as a `pfs` input: one datum of every tick file (glob `/`)."""
        return PfsInput(name=self.name, repo=self.repo, glob="/")


def _fill_cron_repos(node: Any, pipeline: str) -> Any:
    """A cron input without `repo` reads `<pipeline>_<name>`, as in Pachyderm."""
    if isinstance(node, dict):
        out = {k: _fill_cron_repos(v, pipeline) for k, v in node.items()}
        cron = out.get("cron")
        if isinstance(cron, dict) and not cron.get("repo") and isinstance(cron.get("name"), str):
            out["cron"] = {**cron, "repo": f"{pipeline}_{cron['name']}"}
        return out
    if isinstance(node, list):
        return [_fill_cron_repos(v, pipeline) for v in node]
    return node


class Input(_Model):
    """Exactly one of `pfs`, `cross` (every combination of its inputs' datums) or `union` (all)."""

    pfs: PfsInput | None = None
    cross: list[Input] | None = None
    union: list[Input] | None = None
    # `join`: datums of its `pfs` inputs whose `joinOn` keys are equal, crossed (Pachyderm's join);
    # `group`: every datum of its `pfs` inputs with one `groupBy` key, as one datum
    join: list[Input] | None = None
    group: list[Input] | None = None
    cron: CronInput | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_join_or_group_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k) == [] for k in ("join", "group")):
            return {k: v for k, v in data.items() if not (k in ("join", "group") and v == [])}
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Input:
        given = [kind for kind in _INPUT_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            got = ", ".join(f"`{k}`" for k in given) or "none"
            raise _custom_error(
                f"an input needs exactly one of `pfs`, `cross`, `union`, `join`, `group`; got {got}",
                fix="split it into separate inputs, e.g. a `cross` of two `pfs` inputs",
            )
        kind = given[0]
        if kind not in ("pfs", "cron") and not getattr(self, kind):
            raise _custom_error(f"`{kind}` needs at least one input", at=kind)
        key = {"join": "joinOn", "group": "groupBy"}.get(kind)
        if key is not None:
            for i, child in enumerate(getattr(self, kind)):
                leaf = child.pfs
                if leaf is None:
                    raise _custom_error(
                        f"every input of a `{kind}` must be a `pfs` input", at=f"{kind}[{i}]", fix="use `pfs` inputs"
                    )
                if not (leaf.join_on if kind == "join" else leaf.group_by):
                    raise _custom_error(
                        f"a `pfs` input of a `{kind}` needs `{key}`",
                        at=f"{kind}[{i}].pfs.{key}",
                        fix=f'capture part of the path in the glob and name it, e.g. glob "/(*).jpg", {key} "$1"',
                    )
        return self

    def pfs_inputs(self) -> list[PfsInput]:
        """All `pfs` leaves, depth first, in spec order."""
        return [leaf for _, leaf in _pfs_leaves(self, "")]


def _pfs_leaves(inp: Input, path: str) -> Iterator[tuple[str, PfsInput]]:
    if inp.pfs is not None:
        yield _join(path, "pfs"), inp.pfs
    if inp.cron is not None:
        yield _join(path, "cron"), inp.cron.as_pfs()
    for kind in ("cross", "union", "join", "group"):
        for i, child in enumerate(getattr(inp, kind) or []):
            yield from _pfs_leaves(child, f"{_join(path, kind)}[{i}]")


class Transform(_Model):
    """What a worker runs per datum. `image` is kept for Pachyderm but alarmsieve does not pull it."""

    cmd: list[str]
    stdin: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    # Pachyderm: run when `cmd` fails on a datum; exit 0 marks the datum recovered (the job does not
    # fail, the datum writes no output and runs again in the next job).
    err_cmd: list[str] = Field(default_factory=list)
    err_stdin: list[str] = Field(default_factory=list)

    @field_validator("cmd")
    @classmethod
    def _cmd_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('transform.cmd must name the program to run, e.g. ["python3", "/app.py"]')
        return value


class ParallelismSpec(_Model):
    """Worker count: `constant`, or 1.x `coefficient` x CPU count; neither means one worker."""

    constant: int | None = Field(default=None, ge=1)
    coefficient: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _not_both(self) -> ParallelismSpec:
        if self.constant is not None and self.coefficient is not None:
            raise _custom_error("set `constant` or `coefficient`, not both", fix="remove one of them")
        return self

    def workers(self, cpu_count: int) -> int:
        if cpu_count < 1:
            raise ValueError(f"cpu_count must be at least 1, got {cpu_count}")
        if self.constant is not None:
            return self.constant
        if self.coefficient is not None:
            return max(1, round(self.coefficient * cpu_count))
        return 1


class PipelineSpec(_Model):
    """A pipeline as alarmsieve runs it; `to_pachyderm` turns it back into Pachyderm's format."""

    name: str
    description: str = ""
    input: Input
    transform: Transform
    parallelism_spec: ParallelismSpec = Field(default_factory=ParallelismSpec)
    datum_tries: int = Field(default=3, ge=1)
    datum_timeout: timedelta | None = None
    output_branch: str = "master"
    # Informational only (cpu, memory, gpu, disk), kept so the spec still runs on Pachyderm.
    resource_requests: dict[str, Any] | None = None
    # Pachyderm: "until_success" skips datums already processed; "every_job" runs every datum in every job.
    reprocess_spec: Literal["until_success", "every_job"] = "until_success"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "pipeline name")

    @field_validator("datum_timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("datumTimeout must be positive (leave it out for no timeout)")
        return value

    @field_validator("output_branch")
    @classmethod
    def _master_only(cls, value: str) -> str:
        if value != "master":
            raise _custom_error(
                f"output branch {value!r} is not supported; alarmsieve writes to `master` only",
                fix='remove outputBranch or set it to "master"',
            )
        return value

    @model_validator(mode="after")
    def _inputs_consistent(self) -> PipelineSpec:
        seen: dict[str, str] = {}
        for path, leaf in _pfs_leaves(self.input, "input"):
            if leaf.name in seen:
                raise _custom_error(
                    f"input name `{leaf.name}` is used twice: by {seen[leaf.name]} and by {path}",
                    at=f"{path}.name",
                    fix="give each input its own `name` (it becomes the directory /pfs/<name>)",
                )
            seen[leaf.name] = path
            if leaf.repo == self.name:
                raise _custom_error(
                    f"pipeline `{self.name}` cannot read its own output repo",
                    at=f"{path}.repo",
                    fix="read from another repo",
                )
        return self

    def cron_inputs(self) -> list[CronInput]:
        """Every `cron` input, depth first."""

        def walk(node: Input) -> Iterator[CronInput]:
            if node.cron is not None:
                yield node.cron
            for kind in ("cross", "union", "join", "group"):
                for child in getattr(node, kind) or []:
                    yield from walk(child)

        return list(walk(self.input))

    def input_repos(self) -> list[str]:
        """The distinct repos this pipeline reads, in spec order."""
        return list(dict.fromkeys(leaf.repo for leaf in self.input.pfs_inputs()))


# --------------------------------------------------------------------------------------------------
# Normalisation: keys to camelCase, 1.x spellings, zero values, unsupported fields


def _join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _camel(key: str) -> str:
    return re.sub(r"_+([A-Za-z0-9])", lambda m: m.group(1).upper(), key)


_NO_DEFAULT = object()


def _is_unset(value: Any, default: Any = _NO_DEFAULT) -> bool:
    """Pachyderm's zero values (and a field's documented default) mean the field is not set."""
    if default is not _NO_DEFAULT and value == default:
        return True
    if value is None or value is False or value == "":
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, list):
        return not value
    if isinstance(value, dict):
        return all(_is_unset(v) for v in value.values())
    return False


@dataclass
class _Ctx:
    source: str
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (canonical path, key as written)


_Handler = Callable[[Any, str, _Ctx], Any]


@dataclass(frozen=True)
class _Shape:
    """What one object of the spec may hold."""

    supported: Mapping[str, _Handler | None]  # None: keep the value as written
    unsupported: frozenset[str] = frozenset()
    renames: Mapping[str, str] = field(default_factory=dict)  # 1.x spelling -> 2.x
    defaults: Mapping[str, Any] = field(default_factory=dict)  # unsupported field's harmless value
    presence: frozenset[str] = frozenset()  # unsupported fields that count whenever not null
    zero_is_default: frozenset[str] = frozenset()  # supported fields whose "" / 0 means the default


def _norm_object(raw: Any, path: str, ctx: _Ctx, shape: _Shape) -> Any:
    if not isinstance(raw, dict):
        return raw  # the schema reports the wrong type
    out: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise SpecError(ctx.source, path, f"key {key!r} is not a string", "quote the key")
        name = _camel(key)
        name = shape.renames.get(name, name)
        sub = _join(path, name)
        if name in written:
            raise SpecError(
                ctx.source, sub, f"`{written[name]}` and `{key}` set the same field", "keep only one of them"
            )
        written[name] = key
        if value is None:
            continue
        if name in shape.unsupported:
            if name in shape.presence or not _is_unset(value, shape.defaults.get(name, _NO_DEFAULT)):
                ctx.unsupported.append((sub, key))
            continue
        if name in shape.zero_is_default and (value == "" or (type(value) in (int, float) and value == 0)):
            continue
        handler = shape.supported.get(name)  # an unknown key is kept: the schema names it
        value = handler(value, sub, ctx) if handler is not None else value
        if value is not None:
            out[name] = value
    return out


# Go's time.ParseDuration units, as Pachyderm writes durations.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_MICROSECOND = Decimal("0.000001")


def _parse_duration(text: str) -> Decimal:
    """Seconds in a Go duration string ("60s", "1m30s", "1.5h", "0")."""
    text = text.strip()
    if text == "0":
        return Decimal(0)
    if not text:
        raise ValueError(text)
    total, pos = Decimal(0), 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(text)
        total += Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def _seconds_text(seconds: Decimal) -> str:
    """The schema's only duration form: "90s", "1.5s" (microsecond precision, like timedelta)."""
    return format(seconds.quantize(_MICROSECOND).normalize(), "f") + "s"


def _norm_duration(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str):
        return value
    try:
        seconds = _parse_duration(value)
    except ValueError:
        raise SpecError(
            ctx.source, path, f"{value!r} is not a duration", 'write it like "60s", "1m30s" or "1h"'
        ) from None
    return _seconds_text(seconds)


def _norm_glob(value: Any, path: str, ctx: _Ctx) -> Any:
    # Pachyderm roots every glob at the repo's top; make that explicit.
    if isinstance(value, str) and value and not value.startswith("/"):
        return "/" + value
    return value


def _norm_list(item: _Handler) -> _Handler:
    def handle(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, list):
            return value
        return [item(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]

    return handle


def _shaped(shape: _Shape) -> _Handler:
    return lambda value, path, ctx: _norm_object(value, path, ctx, shape)


_GPU = _Shape(supported={"type": None, "number": None})
_RESOURCES = _Shape(supported={"cpu": None, "memory": None, "gpu": _shaped(_GPU), "disk": None})

_PFS = _Shape(
    supported={
        "name": None,
        "repo": None,
        "branch": None,
        "glob": _norm_glob,
        "joinOn": None,
        "outerJoin": None,
        "groupBy": None,
    },
    unsupported=frozenset(
        {
            "project",
            "repoType",
            "commit",
            "lazy",
            "emptyFiles",
            "s3",
            "trigger",
            "propagationSpec",
            "reference",
            "fromCommit",  # 1.x
        }
    ),
    defaults={"project": "default", "repoType": "user"},
    zero_is_default=frozenset({"name", "branch", "joinOn", "groupBy", "outerJoin"}),
)


def _norm_input(value: Any, path: str, ctx: _Ctx) -> Any:
    return _norm_object(value, path, ctx, _INPUT)


_CRON = _Shape(
    supported={"name": None, "spec": None, "repo": None, "overwrite": None},
    unsupported=frozenset({"project", "commit", "start"}),
    defaults={"project": "default"},
    zero_is_default=frozenset({"repo"}),
)

_INPUT = _Shape(
    supported={
        "pfs": _shaped(_PFS),
        "cross": _norm_list(_norm_input),
        "union": _norm_list(_norm_input),
        "join": _norm_list(_norm_input),
        "group": _norm_list(_norm_input),
        "cron": _shaped(_CRON),
    },
    unsupported=frozenset({"git"}),
    renames={"atom": "pfs"},  # 1.x
    presence=frozenset({"git"}),
)

_TRANSFORM = _Shape(
    # env keys stay as written
    supported={"cmd": None, "stdin": None, "env": None, "image": None, "errCmd": None, "errStdin": None},
    unsupported=frozenset(
        {
            "secrets",
            "imagePullSecrets",
            "acceptReturnCode",
            "debug",
            "user",
            "workingDir",
            "dockerfile",
            "memoryVolume",
            "datumBatching",
            "build",  # 1.x
        }
    ),
    zero_is_default=frozenset({"image", "errCmd", "errStdin"}),
)

_PARALLELISM = _Shape(
    supported={"constant": None, "coefficient": None},
    zero_is_default=frozenset({"constant", "coefficient"}),
)

_PIPELINE = _Shape(
    supported={"name": None},
    unsupported=frozenset({"project"}),
    defaults={"project": {"name": "default"}},
)

_TOP = _Shape(
    supported={
        "pipeline": _shaped(_PIPELINE),
        "description": None,
        "input": _norm_input,
        "transform": _shaped(_TRANSFORM),
        "parallelismSpec": _shaped(_PARALLELISM),
        "datumTries": None,
        "datumTimeout": _norm_duration,
        "outputBranch": None,
        "resourceRequests": _shaped(_RESOURCES),
        "reprocessSpec": None,
    },
    unsupported=frozenset(
        {
            # 2.x
            "tfJob",
            "egress",
            "s3Out",
            "resourceLimits",
            "sidecarResourceLimits",
            "sidecarResourceRequests",
            "service",
            "spout",
            "datumSetSpec",
            "jobTimeout",
            "salt",
            "schedulingSpec",
            "podSpec",
            "podPatch",
            "metadata",
            "autoscaling",
            "tolerations",
            "determined",
            "maximumExpectedUptime",
            # 1.x, and request flags pachctl accepts in a spec file
            "standby",
            "enableStats",
            "cacheSize",
            "incremental",
            "scaleDownThreshold",
            "maxQueueSize",
            "chunkSpec",
            "hashtreeSpec",
            "specCommit",
            "batch",
            "reprocess",
            "update",
            "dryRun",
        }
    ),
    # An empty object here still changes what the pipeline is (e.g. `"spout": {}` makes a spout).
    presence=frozenset({"tfJob", "egress", "service", "spout", "determined"}),
    zero_is_default=frozenset({"description", "datumTries", "outputBranch", "reprocessSpec"}),
)

_HINTS = {
    "resourceLimits": "alarmsieve does not cap workers; `resourceRequests` is accepted as information",
    "spout": "alarmsieve pipelines read input repos; commit the incoming data to a repo instead",
    "project": 'alarmsieve has a single project; leave it out or set it to "default"',
}


def _unsupported_error(ctx: _Ctx) -> SpecError:
    path, written = ctx.unsupported[0]
    name = path.rsplit(".", 1)[-1]
    shown = f"`{written}`" if written == name else f"`{written}` (`{name}`)"
    fix = f"remove it or see {DOCS}"
    if name in _HINTS:
        fix += f" ({_HINTS[name]})"
    others = [p for p, _ in ctx.unsupported[1:]]
    if others:
        fix += f"; also not supported here: {', '.join(others)}"
    return SpecError(ctx.source, path, f"field {shown} (at {path}) is not supported by alarmsieve yet", fix)


# --------------------------------------------------------------------------------------------------
# Schema


@cache
def _validator() -> jsonschema.Draft4Validator:
    text = resources.files("alarmsieve.pps").joinpath("schema", SCHEMA_FILE).read_text(encoding="utf-8")
    schema = json.loads(text)
    # alarmsieve's one extension to Pachyderm 2's schema: 1.x `coefficient` (see docs).
    schema["definitions"]["pps_v2.ParallelismSpec"]["properties"]["coefficient"] = {
        "oneOf": [{"type": "number"}, {"type": "null"}]
    }
    return jsonschema.Draft4Validator(schema)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


_ARTICLE = {"object": "an object", "array": "an array", "integer": "an integer"}


def _path_text(parts: Iterator[str | int] | Any) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out


def _describe(err: jsonschema.exceptions.ValidationError) -> tuple[str, str, str]:
    """(field, reason, fix) for one schema error, in words a spec author can act on."""
    path = _path_text(err.absolute_path)
    fix = f"correct the value (see {DOCS})"
    if err.validator == "additionalProperties" and err.validator_value is False and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        key = next((k for k in err.instance if k not in allowed), "?")
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return _join(path, key), f"unknown field `{key}`{hint}", f"check the spelling against {DOCS}"
    types: list[str] = []
    if err.validator == "type":
        types = [err.validator_value] if isinstance(err.validator_value, str) else list(err.validator_value)
    elif err.validator == "oneOf" and all(set(alt) == {"type"} for alt in err.validator_value):
        types = [alt["type"] for alt in err.validator_value]
    types = [t for t in types if t != "null"]
    if types:
        wanted = " or ".join(_ARTICLE.get(t, f"a {t}") for t in types)
        return path, f"must be {wanted}, got {_json_type(err.instance)} ({json.dumps(err.instance)})", fix
    if err.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in err.validator_value)
        return path, f"must be one of {allowed}, got {json.dumps(err.instance)}", fix
    return path, err.message, fix


def validate_against_schema(doc: dict, source: str) -> None:
    """Check a camelCase spec against Pachyderm's CreatePipelineRequest schema (+ `coefficient`)."""
    errors = list(_validator().iter_errors(doc))
    if errors:
        # The deepest error is the most specific place to fix; at equal depth a wrong type explains
        # more than the unknown keys that follow from it.
        err = max(errors, key=lambda e: (len(e.absolute_path), e.validator in ("type", "oneOf")))
        field_path, reason, fix = _describe(err)
        raise SpecError(source, field_path, reason, fix)


# --------------------------------------------------------------------------------------------------
# Building the model


_TOP_LOC = {
    "name": "pipeline.name",
    "parallelism_spec": "parallelismSpec",
    "datum_tries": "datumTries",
    "datum_timeout": "datumTimeout",
    "output_branch": "outputBranch",
    "resource_requests": "resourceRequests",
}


def _spec_error_from(exc: ValidationError, source: str) -> SpecError:
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    if loc and isinstance(loc[0], str):
        loc[0] = _TOP_LOC.get(loc[0], loc[0])
    ctx = err.get("ctx") or {}
    # Model-level errors carry their exact place in ctx["at"], relative to the failing model.
    path = _join(_path_text(_camel(p) if isinstance(p, str) else p for p in loc), ctx.get("at") or "")
    reason = str(ctx.get("msg") or err["msg"]).removeprefix("Value error, ")
    reason = re.sub(r"^Input should", "must", reason)  # pydantic's "Input" is not the spec's `input`
    if err["type"] == "missing":
        reason = "this field is required"
    return SpecError(source, path, reason, ctx.get("fix") or f"correct the value (see {DOCS})")


def _build(doc: dict[str, Any], source: str) -> PipelineSpec:
    name = (doc.get("pipeline") or {}).get("name")
    if not name:
        raise SpecError(source, "pipeline.name", "a pipeline needs a name", 'add "pipeline": {"name": "my-stage"}')
    if "transform" not in doc:
        raise SpecError(
            source, "transform", "a pipeline needs a transform", 'add "transform": {"cmd": ["python3", "/app.py"]}'
        )
    if "input" not in doc:
        raise SpecError(
            source,
            "input",
            "a pipeline needs an input (pipelines without one, like spouts, are not supported)",
            'add "input": {"pfs": {"repo": "images", "glob": "/*"}}',
        )
    transform = doc["transform"]
    if isinstance(transform, dict):
        renames = {"errCmd": "err_cmd", "errStdin": "err_stdin"}
        transform = {renames.get(k, k): v for k, v in transform.items()}
    fields: dict[str, Any] = {"name": name, "input": _fill_cron_repos(doc["input"], name), "transform": transform}
    for key, attr in (
        ("description", "description"),
        ("parallelismSpec", "parallelism_spec"),
        ("datumTries", "datum_tries"),
        ("outputBranch", "output_branch"),
        ("reprocessSpec", "reprocess_spec"),
    ):
        if key in doc:
            fields[attr] = doc[key]
    if "datumTimeout" in doc:
        micros = int(Decimal(doc["datumTimeout"][:-1]) / _MICROSECOND)
        if micros:  # "0s" is Pachyderm's "no timeout"
            try:
                fields["datum_timeout"] = timedelta(microseconds=micros)
            except OverflowError:
                raise SpecError(
                    source, "datumTimeout", f"{doc['datumTimeout']} is too long", "use a shorter timeout"
                ) from None
    if not _is_unset(doc.get("resourceRequests")):
        fields["resource_requests"] = doc["resourceRequests"]
    try:
        return PipelineSpec.model_validate(fields)
    except ValidationError as exc:
        raise _spec_error_from(exc, source) from None


def parse_spec(data: Any, source: str = "<spec>") -> PipelineSpec:
    """Turn one parsed JSON/YAML document (any Pachyderm spelling) into a `PipelineSpec`."""
    if not isinstance(data, dict):
        raise SpecError(
            source, "", f"a pipeline spec must be an object, got {_json_type(data)}", f"see {DOCS} for an example"
        )
    ctx = _Ctx(source)
    doc = _norm_object(data, "", ctx, _TOP)
    if ctx.unsupported:
        raise _unsupported_error(ctx)
    validate_against_schema(doc, source)
    return _build(doc, source)


# --------------------------------------------------------------------------------------------------
# Text and files


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_JSON_SPACE = " \t\r\n\ufeff"


def _json_documents(text: str, source: str) -> list[Any]:
    """JSON objects one after another, optionally separated by `---` lines (as pachctl accepts)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SpecError(source, "", f"key `{key}` appears twice in one object", "keep only one of them")
            out[key] = value
        return out

    decoder = json.JSONDecoder(object_pairs_hook=no_duplicates)
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _JSON_SPACE:
            pos += 1
        if pos >= len(text):
            return docs
        if text.startswith("---", pos) and (pos == 0 or text[pos - 1] == "\n"):
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            if text[pos + 3 : end].strip():
                raise json.JSONDecodeError("content after '---'", text, pos)
            pos = end
            continue
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def _documents(text: str, source: str) -> list[Any]:
    # Text that starts like JSON is JSON: YAML would read broken JSON (`{"pfs": }`) as valid nulls.
    if text.lstrip(_JSON_SPACE)[:1] in ("{", "["):
        try:
            return _json_documents(text, source)
        except json.JSONDecodeError as exc:
            raise SpecError(
                source,
                "",
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                "fix the JSON syntax there",
            ) from None
    try:
        docs = list(yaml.load_all(text, Loader=_YamlLoader))  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        fix = "keep only one of them" if "appears twice" in problem else "fix the YAML syntax there"
        raise SpecError(source, "", f"invalid YAML{where}: {problem}", fix) from None
    return [doc for doc in docs if doc is not None]


def load_spec_documents(text: str, source: str) -> list[PipelineSpec]:
    """Every spec in `text` (JSON objects one after another, or YAML `---` documents).

    With several documents, errors name the source as "<source>#<n>" (n from 1).
    """
    docs = _documents(text, source)
    if not docs:
        raise SpecError(source, "", "no pipeline spec found", f"write a pipeline spec (JSON or YAML); see {DOCS}")
    specs: list[PipelineSpec] = []
    first_doc: dict[str, int] = {}
    for n, doc in enumerate(docs, start=1):
        doc_source = source if len(docs) == 1 else f"{source}#{n}"
        spec = parse_spec(doc, doc_source)
        if spec.name in first_doc:
            raise SpecError(
                doc_source,
                "pipeline.name",
                f"pipeline `{spec.name}` is already defined in document {first_doc[spec.name]}",
                "give each pipeline its own name",
            )
        first_doc[spec.name] = n
        specs.append(spec)
    return specs


def load_spec_text(text: str, source: str = "<spec>") -> PipelineSpec:
    """The one spec in `text` (JSON or YAML)."""
    docs = _documents(text, source)
    if len(docs) != 1:
        what = "no pipeline spec" if not docs else f"{len(docs)} pipeline specs"
        raise SpecError(
            source, "", f"found {what}, expected exactly one", "give one spec, or load the text as several documents"
        )
    return parse_spec(docs[0], source)


def load_spec_file(path: Path) -> PipelineSpec:
    """The one spec in a JSON or YAML file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise SpecError(
            source, "", f"cannot read the file: {exc.strerror or exc}", "check the path and its permissions"
        ) from None
    return load_spec_text(text, source)


# --------------------------------------------------------------------------------------------------
# Canonical form


def _input_doc(inp: Input) -> dict[str, Any]:
    if inp.pfs is not None:
        p = inp.pfs
        doc: dict[str, Any] = {"name": p.name, "repo": p.repo, "branch": p.branch, "glob": p.glob}
        if p.join_on:
            doc["joinOn"] = p.join_on
        if p.outer_join:
            doc["outerJoin"] = True
        if p.group_by:
            doc["groupBy"] = p.group_by
        return {"pfs": doc}
    if inp.cron is not None:
        c = inp.cron
        return {"cron": {"name": c.name, "spec": c.spec, "repo": c.repo, "overwrite": c.overwrite}}
    kind = next(k for k in ("cross", "union", "join", "group") if getattr(inp, k) is not None)
    return {kind: [_input_doc(child) for child in getattr(inp, kind)]}


def to_pachyderm(spec: PipelineSpec) -> dict[str, Any]:
    """The spec in Pachyderm 2's camelCase form, defaults written out; `parse_spec` reads it back."""
    doc: dict[str, Any] = {"pipeline": {"name": spec.name}}
    if spec.description:
        doc["description"] = spec.description
    doc["input"] = _input_doc(spec.input)
    transform: dict[str, Any] = {"cmd": list(spec.transform.cmd)}
    if spec.transform.stdin:
        transform["stdin"] = list(spec.transform.stdin)
    if spec.transform.env:
        transform["env"] = dict(spec.transform.env)
    if spec.transform.image:
        transform["image"] = spec.transform.image
    if spec.transform.err_cmd:
        transform["errCmd"] = list(spec.transform.err_cmd)
    if spec.transform.err_stdin:
        transform["errStdin"] = list(spec.transform.err_stdin)
    doc["transform"] = transform
    parallelism = spec.parallelism_spec.model_dump(exclude_none=True)
    if parallelism:
        doc["parallelismSpec"] = parallelism
    doc["datumTries"] = spec.datum_tries
    if spec.datum_timeout is not None:
        micros = spec.datum_timeout // timedelta(microseconds=1)
        doc["datumTimeout"] = _seconds_text(Decimal(micros) * _MICROSECOND)
    doc["outputBranch"] = spec.output_branch
    if spec.resource_requests:
        doc["resourceRequests"] = json.loads(json.dumps(spec.resource_requests))  # deep copy
    if spec.reprocess_spec != "until_success":  # the default stays out, so older fingerprints hold
        doc["reprocessSpec"] = spec.reprocess_spec
    return doc


def spec_fingerprint(spec: PipelineSpec) -> str:
    """sha256 of the canonical JSON: the same for a spec written in camelCase, snake_case or 1.x."""
    canonical = json.dumps(to_pachyderm(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
