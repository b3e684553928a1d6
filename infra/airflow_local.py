"""A real local Airflow on 127.0.0.1: scheduler, DAG processor and API server (UI + REST), each
started through infra/airflow.sh (this project's DAGs, pools and `spark_default`), stopped by their
own process ids (pid + start time, psutil; never by name).

    infra/airflow.sh up [--port 8080]        # or: make airflow-up
    infra/airflow.sh status
    infra/airflow.sh trigger mm_new_items --wait
    infra/airflow.sh down                    # or: make airflow-down

    with LocalAirflow(env={"MMI_HOME": str(home)}) as af:      # in tests (free port)
        run_id = af.api.trigger("mm_new_items"); af.api.wait(run_id=run_id, dag_id="mm_new_items")

`up` writes $MMI_HOME/airflow/local.json (URL, pids, logs) and leaves the daemons running; `down`
reads it. Logs: $MMI_HOME/airflow/local-logs/<component>.log. The UI's login is `admin` with the
password the simple auth manager generated in $MMI_HOME/airflow/simple_auth_manager_passwords.json.generated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from mminterest.config import REPO_ROOT, load_config

HOST = "127.0.0.1"
AIRFLOW_SH = REPO_ROOT / "infra" / "airflow.sh"
COMPONENTS = ("scheduler", "dag-processor", "api-server")
STATE_FILE = "local.json"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
USER = "admin"


class AirflowLocalError(RuntimeError):
    """Airflow did not come up, is already up, or a call to its REST API failed."""


def airflow_home(env: dict[str, str] | None = None) -> Path:
    """$MMI_HOME/airflow for the config that `env` (default: this process's) selects."""
    home = (env or {}).get("MMI_HOME")
    return load_config(**({"home": Path(home)} if home else {})).home / "airflow"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _alive(entry: dict) -> psutil.Process | None:
    """The process `entry` names ({"pid", "create_time"}), if that very process still runs."""
    try:
        proc = psutil.Process(entry["pid"])
        if (
            abs(proc.create_time() - entry["create_time"]) < 0.01
            and proc.status() != psutil.STATUS_ZOMBIE
        ):
            return proc
    except psutil.Error:
        pass
    return None


def stop_tree(entries: list[dict], timeout: float = 20.0) -> int:
    """SIGTERM the recorded processes (their own shutdown stops task runs), then their leftover
    descendants (task processes, spark-submit JVMs); SIGKILL what remains. Returns how many died."""
    tops = [p for p in map(_alive, entries) if p]
    below: list[psutil.Process] = []
    for proc in tops:
        try:
            below += proc.children(recursive=True)
        except psutil.Error:
            pass
    for proc in tops:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(tops, timeout=timeout)
    rest = left + [p for p in below if p.is_running()]
    for proc in rest:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(rest, timeout=5)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    return len(tops) + len(below)


class Api:
    """Airflow's REST API (/api/v2) as the `admin` user of the simple auth manager (JWT from
    POST /auth/token, refreshed when it expires)."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url.rstrip("/"), home
        self._token: str | None = None

    def password(self) -> str:
        path = self.home / PASSWORDS_FILE
        try:
            return json.loads(path.read_text())[USER]
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
            raise AirflowLocalError(f"no generated password for {USER!r} in {path}") from err

    def token(self) -> str:
        """A JWT for the admin user (what the UI keeps in its `_token` cookie)."""
        if self._token is None:
            self._token = self._call(
                "POST", "/auth/token", {"username": USER, "password": self.password()}, auth=False
            )["access_token"]
        return self._token

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(
            self.url + path,
            method=method,
            headers=headers,
            data=None if body is None else json.dumps(body).encode(),
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return json.loads(res.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code == 401 and auth and self._token is not None:  # expired: once more, fresh
                self._token = None
                return self._call(method, path, body, auth)
            raise AirflowLocalError(
                f"{method} {path}: HTTP {err.code} {err.read()[:500]!r}"
            ) from err

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body)

    def health(self) -> dict:
        return self._call("GET", "/api/v2/monitor/health", auth=False)

    def wait_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """The DAG once the DAG processor has parsed it into the metadata database."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get(f"/api/v2/dags/{dag_id}")
            except AirflowLocalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Unpause `dag_id` (the runs of a paused DAG stay queued) and trigger a run; its run id."""
        self.wait_dag(dag_id)
        self.unpause(dag_id)
        run = self._call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}}
        )
        return run["dag_run_id"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 600.0) -> dict:
        """Poll the run until it succeeds or fails (or `timeout`); the run, its task states added."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                tis = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")[
                    "task_instances"
                ]
                run["task_states"] = {ti["task_id"]: ti["state"] for ti in tis}
                return run
            time.sleep(2)


class LocalAirflow:
    """The three daemons on 127.0.0.1:`port` (0: a free one); `env` is added to each one's
    environment (MMI_HOME, MMI_DATASET_DIR, AIRFLOW__... settings)."""

    def __init__(self, port: int = 8080, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.home = airflow_home(self.env)
        self.port = port
        self.procs: dict[str, dict] = {}
        self._api: Api | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api(self) -> Api:
        if self._api is None or self._api.url != self.url:
            self._api = Api(self.url, self.home)
        return self._api

    @property
    def log_dir(self) -> Path:
        return self.home / "local-logs"

    def _state(self) -> dict | None:
        try:
            return json.loads((self.home / STATE_FILE).read_text())
        except FileNotFoundError:
            return None

    def start(self, timeout: float = 180.0) -> LocalAirflow:
        """Set up (infra/airflow.sh), start the daemons, wait until the API server answers and the
        scheduler and DAG processor report healthy; stop them all again if that fails."""
        state = self._state()
        if state and any(_alive(e) for e in state["procs"].values()):
            raise AirflowLocalError(
                f"Airflow already runs at {state['url']} (pids in "
                f"{self.home / STATE_FILE}): `infra/airflow.sh down` first"
            )
        if self.port == 0:
            self.port = _free_port()
        elif not _port_free(self.port):
            raise AirflowLocalError(
                f"port {self.port} on {HOST} is in use: choose another (--port)"
            )
        setup = subprocess.run(
            [str(AIRFLOW_SH)], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True
        )
        if setup.returncode:
            raise AirflowLocalError(
                f"infra/airflow.sh set-up failed:\n{setup.stdout}{setup.stderr}"
            )
        env = {
            **self.env,
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
        }
        env.setdefault("AIRFLOW__API__WORKERS", "1")
        env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        args = {
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "api-server": ["api-server", "--host", HOST, "--port", str(self.port)],
        }
        popens = {}
        for name in COMPONENTS:
            with open(self.log_dir / f"{name}.log", "ab") as log:
                popens[name] = subprocess.Popen(
                    [str(AIRFLOW_SH), *args[name]],
                    env=env,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            proc = psutil.Process(popens[name].pid)
            self.procs[name] = {"pid": proc.pid, "create_time": proc.create_time()}
        (self.home / STATE_FILE).write_text(
            json.dumps(
                {
                    "url": self.url,
                    "port": self.port,
                    "procs": self.procs,
                    "logs": str(self.log_dir),
                },
                indent=1,
            )
        )
        try:
            self._wait_ready(popens, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return f"--- {name} ({path}):\n{_tail(path)}"

    def _wait_ready(self, popens: dict[str, subprocess.Popen], timeout: float) -> None:
        deadline, health = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            dead = [n for n, p in popens.items() if p.poll() is not None]
            if dead:
                raise AirflowLocalError(
                    "exited during start-up:\n" + "\n".join(map(self._log, dead))
                )
            try:
                health = self.api.health()
                if all(
                    health.get(k, {}).get("status") == "healthy"
                    for k in ("scheduler", "dag_processor")
                ):
                    return
            except (OSError, AirflowLocalError):
                pass
            time.sleep(1)
        raise AirflowLocalError(
            f"not ready after {timeout:.0f} s (health {health}):\n"
            + "\n".join(map(self._log, COMPONENTS))
        )

    def stop(self) -> int:
        """Stop the daemons of the state file (or of this object) by pid; returns processes ended."""
        state = self._state()
        procs = list((state or {}).get("procs", {}).values()) or list(self.procs.values())
        ended = stop_tree(procs)
        (self.home / STATE_FILE).unlink(missing_ok=True)
        return ended

    def status(self) -> dict:
        state = self._state() or {"procs": {}}
        return {**state, "running": {n: bool(_alive(e)) for n, e in state["procs"].items()}}

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/airflow.sh", description="local Airflow daemons on 127.0.0.1"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser(
        "up", help="start scheduler, DAG processor and API server (UI); wait until ready"
    )
    up.add_argument("--port", type=int, default=8080, help="API server and UI port (0: a free one)")
    up.add_argument("--timeout", type=float, default=180.0)
    sub.add_parser("down", help="stop the daemons by their pids")
    sub.add_parser("status", help="URL, pids and whether each daemon runs")
    trig = sub.add_parser("trigger", help="unpause a DAG and trigger a run through the REST API")
    trig.add_argument("dag_id")
    trig.add_argument(
        "--wait", action="store_true", help="wait for the run; exit 1 unless it succeeds"
    )
    trig.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    af = LocalAirflow(port=getattr(args, "port", 8080))
    if args.cmd == "up":
        af.start(args.timeout)
        pids = ", ".join(f"{name} {entry['pid']}" for name, entry in af.procs.items())
        print(
            f"airflow up: UI {af.url} (user {USER}, password in {af.home / PASSWORDS_FILE}); "
            f"pids {pids}; logs {af.log_dir}"
        )
        return 0
    if args.cmd == "down":
        print(f"airflow down: {af.stop()} processes stopped")
        return 0
    state = af.status()
    if args.cmd == "status":
        print(json.dumps(state, indent=1))
        return 0 if state["running"] and all(state["running"].values()) else 1
    if not state["running"]:
        raise SystemExit("airflow is not up: `infra/airflow.sh up` first")
    api = Api(state["url"], af.home)
    run_id = api.trigger(args.dag_id)
    print(f"triggered {args.dag_id} run {run_id}: {state['url']}/dags/{args.dag_id}/runs/{run_id}")
    if not args.wait:
        return 0
    run = api.wait(args.dag_id, run_id, args.timeout)
    print(f"{args.dag_id} run {run_id}: {run['state']} {run['task_states']}")
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
