"""A PNG of a DAG's grid view in the Airflow UI, taken by headless Chromium (Debian's `chromium`).

Chromium is driven over its DevTools protocol (websockets, already in .venv; no WebDriver): the
admin's JWT (POST /auth/token) goes in as the `_token` cookie the UI's login would set, the page
loads, and the shot is taken once every task of the DAG shows in the grid.

    python -m infra.ui_screenshot mm_new_items docs/airflow-grid.png     # Airflow from `up`
    make airflow-screenshot DAG=mm_new_items OUT=docs/airflow-grid.png
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from websockets.sync.client import connect

from infra.airflow_local import Api, LocalAirflow, stop_tree

WIDTH, HEIGHT = 1600, 900


class ScreenshotError(RuntimeError):
    """Chromium is missing, or the page did not show the DAG's tasks in time."""


class _Tab:
    """One page target of Chromium's DevTools protocol."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events interleave with answers: skip them
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise ScreenshotError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        res = self.call(
            "Runtime.evaluate",
            expression="document.body ? document.body.innerText : ''",
            returnByValue=True,
        )
        return res.get("result", {}).get("value") or ""


def _page_ws(port: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as res:
                pages = [t for t in json.loads(res.read()) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ScreenshotError("Chromium's DevTools endpoint did not answer")
        time.sleep(0.3)


def screenshot(
    api: Api, dag_id: str, out: Path, wait_for: list[str], timeout: float = 90.0
) -> Path:
    """Save the UI page of `dag_id` (its grid of runs x tasks) as PNG `out` once every string of
    `wait_for` (the task ids) shows on it."""
    exe = shutil.which("chromium")
    if exe is None:
        raise ScreenshotError("chromium not found: `make airflow-screenshot` installs it (apt)")
    token = api.token()
    with tempfile.TemporaryDirectory(prefix="mmi-chromium-") as profile:
        proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        entry = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise ScreenshotError("Chromium did not start (no DevToolsActivePort)")
                time.sleep(0.2)
            with connect(
                _page_ws(int(port_file.read_text().split()[0])), max_size=None, open_timeout=30
            ) as ws:
                tab = _Tab(ws)
                tab.call("Network.setCookie", name="_token", value=token, url=api.url + "/")
                tab.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=WIDTH,
                    height=HEIGHT,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                tab.call("Page.navigate", url=f"{api.url}/dags/{dag_id}")
                deadline, text = time.monotonic() + timeout, ""
                while not all(w in (text := tab.text()) for w in wait_for):
                    if time.monotonic() > deadline:
                        raise ScreenshotError(
                            f"the page never showed {wait_for}; it showed: {text[:500]!r}"
                        )
                    time.sleep(1)
                time.sleep(2)  # let the last requests paint
                png = base64.b64decode(tab.call("Page.captureScreenshot", format="png")["data"])
        finally:
            stop_tree([entry], timeout=5)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="PNG of a DAG's grid in the UI of the Airflow `up` started"
    )
    parser.add_argument("dag_id")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    state = LocalAirflow().status()
    if not state["running"] or not all(state["running"].values()):
        raise SystemExit("airflow is not up: `make airflow-up` first")
    api = Api(state["url"], LocalAirflow().home)
    tasks = [t["task_id"] for t in api.get(f"/api/v2/dags/{args.dag_id}/tasks")["tasks"]]
    path = screenshot(api, args.dag_id, args.out, tasks)
    print(
        f"screenshot of {state['url']}/dags/{args.dag_id}: {path} ({path.stat().st_size // 1024} KiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
