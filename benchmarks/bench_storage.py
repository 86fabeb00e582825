"""Object store throughput: the S3 backend against a moto server on loopback vs the local folder."""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import Target, say, temp_folder

OBJECTS = 200
SIZE = 256 * 1024


def _measure(store: Any, blobs: list[bytes]) -> dict[str, float]:
    started = time.perf_counter()
    shas = [store.put_bytes(b) for b in blobs]
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    for sha in shas:
        store.get_bytes(sha)
    get_s = time.perf_counter() - started
    megabytes = len(blobs) * SIZE / 1e6
    return {
        "put_mb_s": round(megabytes / put_s, 1),
        "get_mb_s": round(megabytes / get_s, 1),
        "put_ms_per_object": round(put_s / len(blobs) * 1000, 2),
        "get_ms_per_object": round(get_s / len(blobs) * 1000, 2),
    }


def run() -> tuple[dict[str, Any], list[Target]]:
    say(f"== storage: {OBJECTS} objects of {SIZE // 1024} KiB, put then get ==")
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        say(f"SKIPPED: {exc} (pip install 'alarmsieve[s3]' moto[server])")
        return {"skipped": str(exc)}, []
    from alarmsieve.pfs.objects import LocalObjectStore
    from alarmsieve.pfs.objects_s3 import S3ObjectStore

    blobs = [os.urandom(SIZE) for _ in range(OBJECTS)]
    figures: dict[str, Any] = {}
    with temp_folder("alarmsieve-bench-storage-") as tmp:
        figures["local"] = _measure(LocalObjectStore(tmp / "objects"), blobs)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
            os.environ.setdefault(key, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        figures["s3_moto"] = _measure(S3ObjectStore("s3://bench/objects", endpoint_url=endpoint), blobs)
    finally:
        server.stop()
    for name, f in figures.items():
        say(
            f"{name:8s} put {f['put_mb_s']:7.1f} MB/s ({f['put_ms_per_object']:.2f} ms/object)   "
            f"get {f['get_mb_s']:7.1f} MB/s ({f['get_ms_per_object']:.2f} ms/object)"
        )
    say("(moto is an in-process emulator: the S3 figures measure the client path, not a real S3's network)")
    return figures, []
