"""Deployment artefacts, checked as far as a machine without a container engine allows."""

from __future__ import annotations

import tomllib

import yaml

import alarmsieve
from alarmsieve.config import Settings
from tests.conftest import PROJECT


def test_manifests_parse_and_agree_with_the_package() -> None:
    docs = [
        d
        for f in ("deploy/alarmsieve.yaml", "deploy/raycluster.yaml")
        for d in yaml.safe_load_all((PROJECT / f).read_text())
    ]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Deployment", "RayCluster", "Secret", "Service"]
    images = {c["image"] for d in docs for spec in _pod_specs(d) for c in spec["containers"]}
    assert images == {f"alarmsieve:{alarmsieve.__version__}"}
    secret = next(d for d in docs if d["kind"] == "Secret")
    known = {f"ALARMSIEVE_{name.upper()}" for name in Settings.model_fields} | {"ALARMSIEVE_RAY_ADDRESS", "AWS_REGION"}
    assert set(secret["stringData"]) <= known
    assert secret["stringData"]["ALARMSIEVE_OBJECT_STORE"].startswith("s3://")
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    assert f"ray=={ray['spec']['rayVersion']}" in pyproject["project"]["optional-dependencies"]["ray"]


def test_dockerfile_installs_extras_that_exist_and_runs_the_cli() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    extras = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert "pip install '.[s3,postgres,ray]'" in dockerfile and {"s3", "postgres", "ray"} <= extras
    assert 'ENTRYPOINT ["alarmsieve"]' in dockerfile
    copied = {word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]}
    assert copied == {"pyproject.toml", "README.md", "alarmsieve", "pipelines"}
    assert all((PROJECT / path).exists() for path in copied)


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "RayCluster":
        head = doc["spec"]["headGroupSpec"]["template"]["spec"]
        return [head] + [g["template"]["spec"] for g in doc["spec"]["workerGroupSpecs"]]
    return []
