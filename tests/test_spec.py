"""Pipeline specs: Pachyderm's format in, one frozen model out, everything else refused by name."""

from __future__ import annotations

import json
import pickle
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from alarmsieve.pps.spec import (
    Input,
    ParallelismSpec,
    PfsInput,
    PipelineSpec,
    SpecError,
    Transform,
    load_spec_documents,
    load_spec_file,
    load_spec_text,
    parse_spec,
    spec_fingerprint,
    to_pachyderm,
    validate_against_schema,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EXAMPLES = SHARED / "pachyderm" / "examples"
SCHEMAS = SHARED / "pachyderm" / "schema"

# What every example in ../shared/pachyderm/examples yields: the pipeline names it defines, or the
# exact field refused. A new example file fails `test_every_example_is_listed` until it is added here.
PARSES = "parses"
REFUSED = "refused"
EXAMPLE_OUTCOMES: dict[str, tuple[str, Any]] = {
    "group__retail__retail_group.pipeline.json": (PARSES, ["group_store_revenue"]),
    "joins__inner__inner_join.pipeline.json": (PARSES, ["inner_join"]),
    "joins__outer__outer_join.pipeline.json": (PARSES, ["outer_join"]),
    "ml__tensorflow__training_and_export_gpu.pipeline.json": (REFUSED, "resourceLimits"),  # document 1 of 2
    "opencv__edges-union.pipeline.json": (REFUSED, "input.union[1].pfs.project"),  # project "staging"
    "opencv__edges.pipeline.json": (PARSES, ["edges"]),
    "opencv__montage.pipeline.json": (PARSES, ["montage"]),
    "scraper__scraper.cron-cross.pipeline.json": (REFUSED, "transform.acceptReturnCode"),
    "spouts__spout101__spout.pipeline.json": (REFUSED, "spout"),
    "v1.6.0__opencv__edges.atom.json": (PARSES, ["edges"]),
    "v1.6.0__opencv__montage.atom-cross.json": (PARSES, ["montage"]),
    "word_count__map.pipeline.json": (PARSES, ["map"]),
    "word_count__reduce.pipeline.json": (PARSES, ["reduce"]),
}


@pytest.fixture
def examples() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"Pachyderm examples not found at {EXAMPLES} (../shared is not checked out)")
    return EXAMPLES


def test_every_example_is_listed(examples: Path) -> None:
    assert sorted(p.name for p in examples.iterdir() if p.is_file()) == sorted(EXAMPLE_OUTCOMES)


@pytest.mark.parametrize("name", sorted(EXAMPLE_OUTCOMES))
def test_example(examples: Path, name: str) -> None:
    path = examples / name
    text = path.read_text(encoding="utf-8")
    outcome, expected = EXAMPLE_OUTCOMES[name]
    if outcome == REFUSED:
        with pytest.raises(SpecError) as info:
            load_spec_documents(text, name)
        assert info.value.field == expected
        assert "is not supported by alarmsieve yet" in info.value.reason
        assert f"`{expected.rsplit('.', 1)[-1]}`" in info.value.reason
        return
    specs = load_spec_documents(text, name)
    assert [s.name for s in specs] == expected
    assert load_spec_file(path) == specs[0]
    for spec in specs:
        canonical = to_pachyderm(spec)
        validate_against_schema(canonical, name)
        assert parse_spec(canonical, name) == spec
        assert spec_fingerprint(parse_spec(canonical)) == spec_fingerprint(spec)


def test_example_contents(examples: Path) -> None:
    edges = load_spec_file(examples / "opencv__edges.pipeline.json")
    assert edges.input == Input(pfs=PfsInput(name="images", repo="images", branch="master", glob="/*"))
    assert edges.transform.cmd == ["python3", "/edges.py"]
    assert edges.transform.image == "pachyderm/opencv:1.0"
    assert edges.description.startswith("A pipeline that performs image edge detection")
    # The 1.x `atom` spelling of the same pipeline reads the same input.
    assert load_spec_file(examples / "v1.6.0__opencv__edges.atom.json").input == edges.input

    montage = load_spec_file(examples / "opencv__montage.pipeline.json")
    assert montage.input_repos() == ["images", "edges"]
    assert [p.glob for p in montage.input.pfs_inputs()] == ["/", "/"]
    assert load_spec_file(examples / "v1.6.0__opencv__montage.atom-cross.json").input == montage.input

    reduce = load_spec_file(examples / "word_count__reduce.pipeline.json")
    assert reduce.transform.cmd == ["sh"] and len(reduce.transform.stdin) == 9
    assert load_spec_file(examples / "word_count__map.pipeline.json").input.pfs == PfsInput(
        name="scraper", repo="scraper", glob="/*/*"
    )


def test_multi_document_example_reports_document_number(examples: Path) -> None:
    name = "ml__tensorflow__training_and_export_gpu.pipeline.json"
    with pytest.raises(SpecError) as info:
        load_spec_documents((examples / name).read_text(), name)
    assert info.value.source == f"{name}#1"
    # Without the refused field both documents load.
    doc1, doc2 = (examples / name).read_text().split("---")
    trimmed = json.loads(doc1)
    del trimmed["resourceLimits"]
    specs = load_spec_documents(json.dumps(trimmed) + "\n---\n" + doc2, name)
    assert [s.name for s in specs] == ["checkpoint", "model"]
    assert specs[0].parallelism_spec == ParallelismSpec(constant=1)
    assert specs[0].transform.env == {
        "LD_LIBRARY_PATH": "/usr/lib/nvidia:/usr/local/cuda/lib64:/rootfs/usr/lib/x86_64-linux-gnu"
    }


def test_shipped_schema_is_pachyderms() -> None:
    shipped = resources.files("alarmsieve.pps").joinpath("schema")
    names = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".json"))
    assert "CreatePipelineRequest.schema.json" in names
    if SCHEMAS.is_dir():
        assert names == sorted(p.name for p in SCHEMAS.glob("*.json"))
        for n in names:
            assert json.loads(shipped.joinpath(n).read_text()) == json.loads((SCHEMAS / n).read_text())


# --------------------------------------------------------------------------------------------------
# Helpers


def minimal(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pipeline": {"name": "detect"},
        "transform": {"cmd": ["python3", "/app.py"]},
        "input": {"pfs": {"repo": "images", "glob": "/*"}},
    }
    doc.update(extra)
    return doc


def refused(data: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "t.json")
    return info.value


# --------------------------------------------------------------------------------------------------
# SpecError


def test_spec_error_format_and_pickling() -> None:
    err = SpecError("a.json", "input.pfs.glob", "bad glob", "write /*")
    assert str(err) == "a.json: input.pfs.glob: bad glob. Fix: write /*"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.source, again.field, again.reason, again.fix) == ("a.json", "input.pfs.glob", "bad glob", "write /*")


# --------------------------------------------------------------------------------------------------
# Normalisation


def test_defaults() -> None:
    spec = parse_spec(minimal())
    assert spec == PipelineSpec(
        name="detect",
        input=Input(pfs=PfsInput(name="images", repo="images", glob="/*")),
        transform=Transform(cmd=["python3", "/app.py"]),
    )
    assert spec.description == ""
    assert spec.datum_tries == 3
    assert spec.datum_timeout is None
    assert spec.output_branch == "master"
    assert spec.parallelism_spec.workers(16) == 1
    assert spec.input.pfs is not None and spec.input.pfs.branch == "master"
    assert spec.resource_requests is None


CAMEL = {
    "pipeline": {"name": "assess"},
    "description": "judge detections",
    "input": {
        "cross": [
            {"pfs": {"name": "det", "repo": "detect", "glob": "/*", "branch": "master"}},
            {"union": [{"pfs": {"repo": "rules", "glob": "/"}}, {"pfs": {"repo": "defaults", "glob": "/"}}]},
        ]
    },
    "transform": {"cmd": ["alarmsieve", "stage", "assess"], "env": {"LOG_LEVEL": "info"}, "image": "as:1"},
    "parallelismSpec": {"constant": 2},
    "datumTries": 5,
    "datumTimeout": "90s",
    "outputBranch": "master",
    "resourceRequests": {"cpu": 0.5, "memory": "512M"},
}
SNAKE = {
    "pipeline": {"name": "assess"},
    "description": "judge detections",
    "input": {
        "cross": [
            {"atom": {"name": "det", "repo": "detect", "glob": "*"}},  # 1.x atom, unrooted glob
            {"union": [{"pfs": {"repo": "rules", "glob": "/"}}, {"atom": {"repo": "defaults", "glob": "/"}}]},
        ]
    },
    "transform": {"cmd": ["alarmsieve", "stage", "assess"], "env": {"LOG_LEVEL": "info"}, "image": "as:1"},
    "parallelism_spec": {"constant": 2, "coefficient": 0},
    "datum_tries": 5,
    "datum_timeout": "1m30s",
    "resource_requests": {"cpu": 0.5, "memory": "512M", "gpu": None},
    "egress": None,
    "s3_out": False,
    "reprocess_spec": "until_success",
    "enable_stats": False,
}


def test_camel_snake_and_atom_are_the_same_spec() -> None:
    camel, snake = parse_spec(CAMEL), parse_spec(SNAKE)
    assert camel == snake
    assert spec_fingerprint(camel) == spec_fingerprint(snake)
    assert camel.datum_timeout == timedelta(seconds=90)
    assert camel.input_repos() == ["detect", "rules", "defaults"]
    assert [p.name for p in camel.input.pfs_inputs()] == ["det", "rules", "defaults"]
    assert camel.transform.env == {"LOG_LEVEL": "info"}  # env keys are not camelCased
    assert camel.resource_requests == {"cpu": 0.5, "memory": "512M"}


def test_fingerprint_changes_with_the_spec() -> None:
    base = spec_fingerprint(parse_spec(minimal()))
    assert len(base) == 64 and int(base, 16) >= 0
    assert spec_fingerprint(parse_spec(minimal(datumTries=4))) != base
    assert spec_fingerprint(parse_spec(minimal(input={"pfs": {"repo": "images", "glob": "/**"}}))) != base
    # Pachyderm's zero values are defaults.
    assert spec_fingerprint(parse_spec(minimal(datumTries=0, outputBranch="", description=""))) == base


def test_to_pachyderm_is_valid_pachyderm_and_round_trips() -> None:
    spec = parse_spec(CAMEL)
    canonical = to_pachyderm(spec)
    assert canonical["input"]["cross"][1]["union"][0] == {
        "pfs": {"name": "rules", "repo": "rules", "branch": "master", "glob": "/"}
    }
    assert canonical["datumTimeout"] == "90s"
    # Valid against Pachyderm's schema as shipped, not only against alarmsieve's reading of it.
    raw = json.loads(
        resources.files("alarmsieve.pps").joinpath("schema", "CreatePipelineRequest.schema.json").read_text()
    )
    jsonschema.Draft4Validator(raw).validate(canonical)
    assert parse_spec(canonical) == spec
    assert to_pachyderm(parse_spec(canonical)) == canonical


def test_coefficient_round_trips() -> None:
    spec = parse_spec(minimal(parallelism_spec={"coefficient": 0.5}))
    assert spec.parallelism_spec == ParallelismSpec(coefficient=0.5)
    assert to_pachyderm(spec)["parallelismSpec"] == {"coefficient": 0.5}
    validate_against_schema(to_pachyderm(spec), "x")
    assert parse_spec(to_pachyderm(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "cpus", "workers"),
    [
        (ParallelismSpec(), 8, 1),
        (ParallelismSpec(constant=3), 8, 3),
        (ParallelismSpec(coefficient=0.5), 8, 4),
        (ParallelismSpec(coefficient=0.1), 4, 1),
        (ParallelismSpec(coefficient=2), 3, 6),
    ],
)
def test_workers(spec: ParallelismSpec, cpus: int, workers: int) -> None:
    assert spec.workers(cpus) == workers


def test_parallelism_rules() -> None:
    assert parse_spec(minimal(parallelismSpec={"constant": 0})).parallelism_spec == ParallelismSpec()
    err = refused(minimal(parallelismSpec={"constant": 2, "coefficient": 0.5}))
    assert err.field == "parallelismSpec" and "not both" in err.reason
    assert refused(minimal(parallelismSpec={"constant": -1})).field == "parallelismSpec.constant"
    with pytest.raises(ValueError):
        ParallelismSpec().workers(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60s", timedelta(seconds=60)),
        ("1m30s", timedelta(seconds=90)),
        ("1h", timedelta(hours=1)),
        ("2h45m", timedelta(hours=2, minutes=45)),
        ("1.5h", timedelta(minutes=90)),
        ("300ms", timedelta(milliseconds=300)),
        ("1500us", timedelta(microseconds=1500)),
        ("0.5s", timedelta(milliseconds=500)),
        ("0", None),  # Pachyderm: no timeout
        ("0s", None),
    ],
)
def test_datum_timeout(text: str, expected: timedelta | None) -> None:
    spec = parse_spec(minimal(datumTimeout=text))
    assert spec.datum_timeout == expected
    assert parse_spec(to_pachyderm(spec)) == spec


@pytest.mark.parametrize("bad", ["1 minute", "-5s", "5", "1d", ""])
def test_bad_datum_timeout(bad: str) -> None:
    err = refused(minimal(datumTimeout=bad))
    assert err.field == "datumTimeout"


def test_datum_timeout_must_be_a_string() -> None:
    err = refused(minimal(datumTimeout=60))
    assert (err.field, err.reason) == ("datumTimeout", "must be a string, got an integer (60)")


def test_datum_tries() -> None:
    assert parse_spec(minimal(datumTries=1)).datum_tries == 1
    assert parse_spec(minimal(datumTries=0)).datum_tries == 3
    assert refused(minimal(datumTries=-2)).field == "datumTries"


def test_output_branch_is_master_only() -> None:
    assert parse_spec(minimal(outputBranch="master")).output_branch == "master"
    err = refused(minimal(outputBranch="staging"))
    assert err.field == "outputBranch" and "master" in err.reason


def test_glob_without_leading_slash_is_rooted() -> None:
    spec = parse_spec(minimal(input={"pfs": {"repo": "images", "glob": "cam-1/*"}}))
    assert spec.input.pfs is not None and spec.input.pfs.glob == "/cam-1/*"


def test_both_spellings_of_one_field_are_refused() -> None:
    err = refused(minimal(datum_tries=2, datumTries=3))
    assert err.field == "datumTries" and "`datum_tries`" in err.reason
    err = refused(minimal(input={"atom": {"repo": "a", "glob": "/"}, "pfs": {"repo": "a", "glob": "/"}}))
    assert err.field == "input.pfs"


# --------------------------------------------------------------------------------------------------
# Unsupported fields: refused by name, unless empty or default


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (minimal(egress={"URL": "s3://bucket/dir"}), "egress"),
        (minimal(egress={}), "egress"),  # an empty egress still asks for egress
        (minimal(spout={}), "spout"),
        (minimal(service={"internalPort": 80}), "service"),
        (minimal(tfJob={"tfJob": "{}"}), "tfJob"),
        (minimal(s3Out=True), "s3Out"),
        (minimal(resourceLimits={"cpu": 2}), "resourceLimits"),
        (minimal(sidecar_resource_limits={"memory": "1G"}), "sidecarResourceLimits"),
        (minimal(autoscaling=True), "autoscaling"),
        (minimal(standby=True), "standby"),
        (minimal(schedulingSpec={"nodeSelector": {"gpu": "yes"}}), "schedulingSpec"),
        (minimal(salt="abc"), "salt"),
        (minimal(jobTimeout="10m"), "jobTimeout"),
        (minimal(datumSetSpec={"number": 2}), "datumSetSpec"),
        (minimal(podPatch="[]"), "podPatch"),
        (minimal(metadata={"labels": {"a": "b"}}), "metadata"),
        (minimal(tolerations=[{"key": "k"}]), "tolerations"),
        (minimal(enable_stats=True), "enableStats"),
        (minimal(pipeline={"name": "detect", "project": {"name": "research"}}), "pipeline.project"),
        (minimal(transform={"cmd": ["x"], "secrets": [{"name": "s"}]}), "transform.secrets"),
        (minimal(transform={"cmd": ["x"], "workingDir": "/app"}), "transform.workingDir"),
        (minimal(transform={"cmd": ["x"], "acceptReturnCode": [1]}), "transform.acceptReturnCode"),
        (minimal(transform={"cmd": ["x"], "user": "root"}), "transform.user"),
        (
            minimal(input={"cron": {"name": "tick", "spec": "@every 1m", "start": "2026-01-01T00:00:00Z"}}),
            "input.cron.start",
        ),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "lazy": True}}), "input.pfs.lazy"),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "empty_files": True}}), "input.pfs.emptyFiles"),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "commit": "abc"}}), "input.pfs.commit"),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "s3": True}}), "input.pfs.s3"),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "trigger": {"size": "1M"}}}), "input.pfs.trigger"),
        (minimal(input={"pfs": {"repo": "a", "glob": "/*", "project": "research"}}), "input.pfs.project"),
        (minimal(input={"atom": {"repo": "a", "glob": "/*", "from_commit": "abc"}}), "input.pfs.fromCommit"),
        (minimal(input={"cross": [{"pfs": {"repo": "a", "glob": "/"}}, {"git": {"URL": "x"}}]}), "input.cross[1].git"),
    ],
)
def test_unsupported_field_is_refused_by_name(doc: dict[str, Any], field: str) -> None:
    err = refused(doc)
    assert err.field == field
    assert "is not supported by alarmsieve yet" in err.reason
    assert f"(at {field})" in err.reason
    assert "docs/pipeline-spec.md" in err.fix


def test_unsupported_field_message_uses_the_written_name() -> None:
    err = refused(minimal(resource_limits={"cpu": 1}))
    assert (
        err.reason
        == "field `resource_limits` (`resourceLimits`) (at resourceLimits) is not supported by alarmsieve yet"
    )
    assert str(err).startswith("t.json: resourceLimits: field `resource_limits`")


def test_all_unsupported_fields_are_listed() -> None:
    # The first in document order is the error's field; the fix lists the rest.
    err = refused(minimal(egress={"URL": "x"}, salt="s", transform={"cmd": ["x"], "debug": True}))
    assert err.field == "transform.debug"
    assert err.fix.endswith("; also not supported here: egress, salt")


@pytest.mark.parametrize(
    "extra",
    [
        {"egress": None},
        {"s3Out": False},
        {"resourceLimits": {}},
        {"resourceLimits": {"gpu": None, "cpu": 0}},
        {"reprocessSpec": "until_success"},
        {"autoscaling": False},
        {"tolerations": []},
        {"salt": ""},
        {"podPatch": ""},
        {"standby": False},
        {"pipeline": {"name": "detect", "project": {"name": "default"}}},
        {"transform": {"cmd": ["x"], "debug": False, "workingDir": "", "secrets": [], "errCmd": None}},
        {"input": {"pfs": {"repo": "a", "glob": "/*", "lazy": False, "project": "default", "repoType": "user"}}},
        {"input": {"pfs": {"repo": "a", "glob": "/*"}, "cron": None, "join": []}},
    ],
)
def test_empty_or_default_unsupported_fields_count_as_absent(extra: dict[str, Any]) -> None:
    parse_spec(minimal(**extra))


def test_resource_requests_are_informational() -> None:
    spec = parse_spec(
        minimal(resourceRequests={"cpu": 2, "memory": "4G", "gpu": {"type": "nvidia.com/gpu", "number": 1}})
    )
    assert spec.resource_requests == {"cpu": 2, "memory": "4G", "gpu": {"type": "nvidia.com/gpu", "number": 1}}
    assert to_pachyderm(spec)["resourceRequests"] == spec.resource_requests
    assert parse_spec(minimal(resourceRequests={})).resource_requests is None
    assert refused(minimal(resourceRequests={"cpu": "lots"})).field == "resourceRequests.cpu"


# --------------------------------------------------------------------------------------------------
# Schema and model errors name the field


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        (minimal(input={"pfs": {"repo": "images", "glob": 5}}), "input.pfs.glob", "must be a string, got an integer"),
        (minimal(input={"pfs": {"repo": "images", "glob": "/[a"}}), "input.pfs.glob", "unbalanced '['"),
        (
            minimal(input={"pfs": {"repo": "images", "glob": "/*", "blob": "x"}}),
            "input.pfs.blob",
            "did you mean `glob`",
        ),
        (minimal(transfrom={"cmd": ["x"]}), "transfrom", "unknown field `transfrom` (did you mean `transform`?)"),
        (minimal(input={"cross": {"pfs": {}}}), "input.cross", "must be an array, got an object"),
        (minimal(input="images"), "input", "must be an object, got a string"),
        (minimal(transform={"cmd": ["x"], "env": {"N": 1}}), "transform.env.N", "must be a string"),
        (minimal(transform={"cmd": "python3 app.py"}), "transform.cmd", "must be an array"),
        (minimal(transform={"cmd": []}), "transform.cmd", "must name the program"),
        (minimal(datumTries="3"), "datumTries", "must be an integer, got a string"),
        (minimal(description=5), "description", "must be a string"),
        (minimal(input={"cross": []}), "input.cross", "needs at least one input"),
        (minimal(input={}), "input", "exactly one of `pfs`, `cross`, `union`, `join`, `group`; got none"),
        (
            minimal(input={"pfs": {"repo": "a", "glob": "/"}, "union": [{"pfs": {"repo": "b", "glob": "/"}}]}),
            "input",
            "got `pfs`, `union`",
        ),
        (minimal(input={"pfs": {"glob": "/*"}}), "input.pfs.name", "required"),
        (minimal(input={"pfs": {"repo": "images"}}), "input.pfs.glob", "required"),
        (minimal(input={"pfs": {"repo": "my repo", "glob": "/*"}}), "input.pfs.repo", "only letters, digits"),
        (minimal(input={"pfs": {"repo": "a", "branch": "dev/x", "glob": "/*"}}), "input.pfs.branch", "branch name"),
        (minimal(input={"pfs": {"repo": "a", "name": "out", "glob": "/*"}}), "input.pfs.name", "/pfs/out"),
        (minimal(input={"pfs": {"repo": "detect", "glob": "/*"}}), "input.pfs.repo", "its own output repo"),
        (minimal(pipeline={"name": "a.b"}), "pipeline.name", "only letters, digits, '-' and '_'"),
        (minimal(pipeline={"name": "x" * 64}), "pipeline.name", "at most 63"),
        (minimal(pipeline={}), "pipeline.name", "needs a name"),
        ({"pipeline": {"name": "p"}, "input": {"pfs": {"repo": "a", "glob": "/"}}}, "transform", "needs a transform"),
        ({"pipeline": {"name": "p"}, "transform": {"cmd": ["x"]}}, "input", "needs an input"),
    ],
)
def test_errors_name_the_field(doc: Any, field: str, reason: str) -> None:
    err = refused(doc)
    assert err.field == field
    assert reason in err.reason
    assert err.source == "t.json"
    assert err.fix


def test_pipeline_name_rules() -> None:
    assert parse_spec(minimal(pipeline={"name": "A_b-9" + "x" * 58})).name == "A_b-9" + "x" * 58
    with pytest.raises(ValidationError):
        PipelineSpec(name="", input=Input(pfs=PfsInput(repo="a", glob="/")), transform=Transform(cmd=["x"]))


def test_input_names_must_be_unique_and_error_names_both() -> None:
    doc = minimal(
        input={
            "cross": [
                {"pfs": {"repo": "images", "glob": "/*"}},
                {"union": [{"pfs": {"repo": "rules", "glob": "/"}}, {"pfs": {"repo": "images", "glob": "/"}}]},
            ]
        }
    )
    err = refused(doc)
    assert err.field == "input.cross[1].union[1].pfs.name"
    assert "input.cross[0].pfs" in err.reason and "input.cross[1].union[1].pfs" in err.reason
    # Distinct names make the same repos fine.
    doc["input"]["cross"][1]["union"][1]["pfs"]["name"] = "images_all"
    assert parse_spec(doc).input_repos() == ["images", "rules"]


def test_models_are_frozen_and_forbid_extra_fields() -> None:
    spec = parse_spec(minimal())
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        PfsInput(repo="a", glob="/", lazy=True)  # type: ignore[call-arg]
    assert PfsInput(repo="a", glob="/").name == "a"
    with pytest.raises(ValidationError):
        Input()


def test_validate_against_schema_directly() -> None:
    validate_against_schema(minimal(), "x")
    with pytest.raises(SpecError) as info:
        validate_against_schema(minimal(datumTimeout="1m"), "x")  # the schema wants seconds
    assert info.value.field == "datumTimeout"


def test_non_object_document() -> None:
    err = refused([1, 2])
    assert (err.field, err.reason) == ("", "a pipeline spec must be an object, got an array")


# --------------------------------------------------------------------------------------------------
# Text, files, documents

YAML = """\
# detect objects in each image
pipeline:
  name: detect
input:
  pfs:
    repo: images
    glob: "/*"
transform:
  cmd: [python3, /app.py]
parallelism_spec:
  constant: 2
datum_timeout: 5m
"""


def test_yaml_and_json_text_agree() -> None:
    from_yaml = load_spec_text(YAML, "detect.yaml")
    assert from_yaml.datum_timeout == timedelta(minutes=5)
    assert from_yaml.parallelism_spec.workers(4) == 2
    assert load_spec_text(json.dumps(to_pachyderm(from_yaml))) == from_yaml


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{\n  "pipeline": {"name": "p"},\n  "input": {"pfs": \n}\n}', "invalid JSON at line 4, column 1"),
        ('{"pipeline": {"name": "p"}, "pipeline": {"name": "q"}}', "key `pipeline` appears twice"),
        ("pipeline:\n  name: p\n transform: 1\n", "invalid YAML at line 3"),
        (
            "pipeline: {name: p}\npipeline: {name: q}\n",
            "invalid YAML at line 2, column 1: key 'pipeline' appears twice",
        ),
        ('{"pipeline": {"name": "p"},}', "invalid JSON at line 1, column 28"),
        ('{"a": 1}\n---\n{"a": ', "invalid JSON at line 3"),
        ("", "found no pipeline spec"),
        ("# nothing\n", "found no pipeline spec"),
    ],
)
def test_syntax_errors(text: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "s.json")
    assert info.value.field == ""
    assert reason in info.value.reason
    assert info.value.source == "s.json"


def test_several_documents() -> None:
    a, b = minimal(pipeline={"name": "a"}), minimal(pipeline={"name": "b"})
    as_stream = json.dumps(a) + "\n" + json.dumps(b)
    as_dashes = json.dumps(a, indent=2) + "\n---\n" + json.dumps(b, indent=2) + "\n"
    as_yaml = "---\npipeline: {name: a}\ntransform: {cmd: [python3, /app.py]}\ninput: {pfs: {repo: images, glob: /*}}\n"
    as_yaml += as_yaml.replace("name: a", "name: b")
    for text in (as_stream, as_dashes, as_yaml):
        assert [s.name for s in load_spec_documents(text, "many.yaml")] == ["a", "b"]
        with pytest.raises(SpecError, match="found 2 pipeline specs, expected exactly one"):
            load_spec_text(text, "many.yaml")
    assert [s.name for s in load_spec_documents(json.dumps(a), "one.json")] == ["a"]


def test_several_documents_errors() -> None:
    bad = minimal(pipeline={"name": "b"}, egress={"URL": "x"})
    with pytest.raises(SpecError) as info:
        load_spec_documents(json.dumps(minimal()) + json.dumps(bad), "many.json")
    assert (info.value.source, info.value.field) == ("many.json#2", "egress")
    with pytest.raises(SpecError) as info:
        load_spec_documents(json.dumps(minimal()) + "\n" + json.dumps(minimal()), "many.json")
    assert info.value.field == "pipeline.name" and "already defined in document 1" in info.value.reason
    with pytest.raises(SpecError, match="no pipeline spec found"):
        load_spec_documents("  \n", "empty.json")


def test_load_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "detect.yaml"
    path.write_text(YAML)
    assert load_spec_file(path).name == "detect"
    with pytest.raises(SpecError) as info:
        load_spec_file(tmp_path / "missing.json")
    assert info.value.source.endswith("missing.json") and "cannot read" in info.value.reason
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec_file(binary)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(minimal(spout={})))
    with pytest.raises(SpecError) as info:
        load_spec_file(bad)
    assert (info.value.source, info.value.field) == (str(bad), "spout")
