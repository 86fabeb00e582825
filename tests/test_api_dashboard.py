"""End to end in a browser: `alarmsieve serve --http` (a child process), an alarm posted over HTTP,
then the dashboard in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): sign in,
see the alarm in the review list with its verdict, open it, mark it wrong, see the feedback stored.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from alarmsieve.api.tokens import TokenStore
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT

CHROMIUM = os.environ.get("ALARMSIEVE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(make_workspace: Callable[..., Workspace]) -> Iterator[tuple[Workspace, str, subprocess.Popen]]:
    ws = make_workspace()
    port = free_port()
    env = {**os.environ, "ALARMSIEVE_HOME": str(ws.home), "ALARMSIEVE_MODEL_DIR": str(ws.settings.model_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alarmsieve", "serve", "--http", "--port", str(port), "--interval", "5"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).json() == {"ok": True}:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"serve --http did not come up: {out}")
            time.sleep(0.1)
        yield ws, url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"Chromium not found at {CHROMIUM}; apt-get install chromium")
def test_post_review_open_mark_wrong(served: tuple[Workspace, str, subprocess.Popen], shared_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ws, url, proc = served
    store = TokenStore(ws.catalog_url)
    _, operator = store.create("olga", "operator")
    _, camera = store.create("yard", "camera", "yard-1")

    image = (shared_dir / "images" / "coral" / "grace_hopper.bmp").read_bytes()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {camera}"}, timeout=60) as c:
        r = c.post("/api/v1/alarms", data={"camera": "yard-1", "site": "depot"}, files={"file": ("a.bmp", image)})
        assert r.status_code == 202, r.text
        alarm_id = r.json()["id"]
        status = c.get(f"/api/v1/alarms/{alarm_id}", params={"wait": "30s", "final": "true"}).json()
        assert status["state"] == "done" and status["verdict"]["verdict"] == "alert", status
        deadline = time.monotonic() + 60  # the notify job runs after the verdict is committed
        while status.get("notification") is None and time.monotonic() < deadline:
            time.sleep(0.2)
            status = c.get(f"/api/v1/alarms/{alarm_id}", params={"final": "true"}).json()
        assert status["notification"] is not None, status

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/review")
            assert page.url.startswith(f"{url}/login")  # not signed in: sent to the sign-in form
            page.fill("#token", camera)
            page.click("#sign-in")
            expect(page.locator("#login-error")).to_contain_text("camera token")
            page.fill("#token", operator)
            page.click("#sign-in")
            page.wait_for_url(f"{url}/review")

            row = page.locator(f'tr.alarm[data-alarm="{alarm_id}"]')
            expect(row).to_have_count(1)
            expect(row.locator("td.verdict")).to_have_text("alert")
            expect(row).to_contain_text("person")  # the reason names what was seen
            thumb = row.locator("img.thumb")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())

            # filters: another site hides it, the right verdict keeps it
            page.goto(f"{url}/review?site=elsewhere")
            expect(page.locator("tr.alarm")).to_have_count(0)
            page.goto(f"{url}/review?site=depot&verdict=alert&label=person")
            expect(page.locator(f'tr.alarm[data-alarm="{alarm_id}"]')).to_have_count(1)

            page.locator(f'tr.alarm[data-alarm="{alarm_id}"] a.open').click()
            expect(page.locator("h1")).to_have_text(alarm_id)
            expect(page.locator("#verdict")).to_contain_text("alert")
            expect(page.locator("#verdict")).to_contain_text("yolox")  # the model that judged it
            expect(page.locator("#detections")).to_contain_text("person")
            expect(page.locator("#notifications")).not_to_contain_text("No notification record yet")

            page.check('input[name="label"][value="false_alarm"]')
            page.fill('input[name="note"]', "a poster of a person")
            page.click("#send-feedback")
            expect(page.locator("#saved")).to_contain_text("Feedback stored")
            expect(page.locator("#current-feedback")).to_contain_text("false_alarm")

            page.goto(f"{url}/system")
            expect(page.locator("#pipelines")).to_contain_text("detect")
            expect(page.locator("#workers")).to_contain_text("detect")
            page.locator("#pipelines a", has_text="logs").first.click()
            expect(page.locator("h1")).to_have_text("Logs")
        finally:
            browser.close()

    label = ws.pfs.get_file("feedback", "master", f"/{alarm_id}/label.json")
    assert b'"label": "false_alarm"' in label and b'"operator": "olga"' in label
    assert b'"verdict_given": "alert"' in label and b'"expected_verdict": "dismiss"' in label
    assert ws.pfs.get_file("feedback", "master", f"/{alarm_id}/image.bmp") == image

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert b"HTTP API on http://127.0.0.1" in out and b"assess job" in out and b"stopped" in out
