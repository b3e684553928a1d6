"""A Spark standalone cluster on 127.0.0.1: one master and N workers, started from the installed
pyspark's `bin/spark-class` (the wheel has no sbin/ scripts), on free ports, logs under a folder,
stopped by their own process ids.

    with SparkCluster(workers=2, log_dir=tmp) as cluster:      # in tests
        run_the_job(MMI_SPARK_MASTER=cluster.master_url)

    python -m infra.spark_cluster start [--workers 2 --cores 1 --memory 1g --dir DIR]
    python -m infra.spark_cluster status|stop [--dir DIR]    # DIR default: $MMI_HOME/spark-cluster

`start` leaves the daemons running and writes DIR/cluster.json (master URL, pids); `stop` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.procs import Proc, free_port, poll, stop

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster did not come up (the message carries the relevant log tail)."""


def spark_class() -> Path:
    """bin/spark-class of the pyspark installed in this interpreter's environment."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class SparkCluster:
    """Master + `workers` workers of `cores` cores and `memory` each; daemons get `daemon_memory` heap."""

    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    log_dir: Path | None = None  # default: a fresh temporary folder
    daemon_memory: str = "256m"
    ready_timeout: float = 90.0
    master_url: str = ""
    ui_url: str = ""
    procs: list[Proc] = field(default_factory=list)  # master first, then workers
    _children: list[subprocess.Popen] = field(default_factory=list, init=False, repr=False)

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> SparkCluster:
        """Start the daemons and wait until the master is ALIVE with every worker registered."""
        if self.log_dir is None:
            import tempfile

            self.log_dir = Path(tempfile.mkdtemp(prefix="mmi-spark-cluster-"))
        self.log_dir = Path(self.log_dir).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            port, ui_port = free_port(), free_port()
            self._launch(
                "master",
                [_MASTER, "--host", HOST, "--port", str(port), "--webui-port", str(ui_port)],
            )
            self.master_url, self.ui_url = self._master_addresses()
            for i in range(self.workers):
                work = self.log_dir / f"work-{i}"
                work.mkdir(exist_ok=True)
                self._launch(
                    f"worker-{i}",
                    [
                        _WORKER,
                        "--host",
                        HOST,
                        "--port",
                        "0",
                        "--webui-port",
                        "0",
                        "--cores",
                        str(self.cores),
                        "--memory",
                        self.memory,
                        "--work-dir",
                        str(work),
                        self.master_url,
                    ],
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._save()
        return self

    def stop(self, timeout: float = 20.0) -> list[Proc]:
        """Stop executors, workers, then the master, by pid; returns every process it stopped."""
        master, workers = self.procs[:1], self.procs[1:]
        below = [
            d
            for p in self.procs
            if p.running()  # executors and their python workers
            for d in p.descendants()
            if d.running()
        ]
        everything = below + workers[::-1] + master
        left = stop(everything, timeout)
        for child in self._children:  # started by this object: reap them (no zombies left)
            child.poll()
        if left:
            raise ClusterError(f"still running after SIGKILL: {[p.pid for p in left]}")
        return everything

    def __enter__(self) -> SparkCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        """The folder of logs, work dirs and cluster.json (set by `start`)."""
        if self.log_dir is None:
            raise ClusterError("cluster not started")
        return Path(self.log_dir)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def status(self) -> dict:
        """The master's JSON status (workers, apps, cores)."""
        with urllib.request.urlopen(self.ui_url.rstrip("/") + "/json/", timeout=5) as resp:
            return json.load(resp)

    def running(self) -> bool:
        return bool(self.procs) and all(p.running() for p in self.procs)

    @classmethod
    def load(cls, log_dir: Path) -> SparkCluster:
        """The cluster whose state `start` wrote to log_dir/cluster.json."""
        state = json.loads((Path(log_dir) / STATE_FILE).read_text())
        procs = [Proc(p["pid"], p["started"]) for p in state.pop("procs")]
        return cls(**{**state, "log_dir": Path(state["log_dir"])}, procs=procs)

    def _save(self) -> None:
        state = {
            "workers": self.workers,
            "cores": self.cores,
            "memory": self.memory,
            "log_dir": str(self.log_dir),
            "master_url": self.master_url,
            "ui_url": self.ui_url,
            "procs": [{"pid": p.pid, "started": p.started} for p in self.procs],
        }
        (self.logs / STATE_FILE).write_text(json.dumps(state, indent=1))

    # -- internals ---------------------------------------------------------------------------
    def _launch(self, name: str, args: list[str]) -> None:
        env = {**os.environ, "SPARK_LOCAL_IP": HOST, "SPARK_DAEMON_MEMORY": self.daemon_memory}
        # no REST submission server (it would take the fixed port 6066); tidy finished apps' folders
        for var, opt in (
            ("SPARK_MASTER_OPTS", "-Dspark.master.rest.enabled=false"),
            ("SPARK_WORKER_OPTS", "-Dspark.worker.cleanup.enabled=true"),
        ):
            env[var] = f"{env.get(var, '')} {opt}".strip()
        with open(self.logs / f"{name}.log", "wb") as log:  # fresh: addresses are read from it
            proc = subprocess.Popen(
                [str(spark_class()), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )  # a Ctrl-C in the caller is not theirs
        me = Proc.of(proc.pid)
        if me is None:
            raise ClusterError(f"{name} exited at once:\n{_tail(self.logs / f'{name}.log')}")
        self.procs.append(me)
        self._children.append(proc)

    def _master_addresses(self) -> tuple[str, str]:
        """(spark:// URL, web UI URL) as the master reports them (Spark may move off a taken port)."""
        log = self.logs / "master.log"

        def addresses() -> tuple[str, str] | None:
            text = log.read_text(errors="replace") if log.exists() else ""
            url = _search(r"Starting Spark master at (spark://\S+)", text)
            ui = _search(r"Successfully started service 'MasterUI' on port (\d+)", text)
            if url and ui:
                return url, f"http://{HOST}:{ui}"
            if not self.procs[0].running():
                raise ClusterError(f"master died:\n{_tail(log)}")
            return None

        found = poll(addresses, self.ready_timeout, 0.2)
        if found is None:
            raise ClusterError(f"master did not start in {self.ready_timeout:.0f} s:\n{_tail(log)}")
        return found

    def _wait_ready(self) -> None:
        seen: dict = {}

        def ready() -> bool:
            nonlocal seen
            for proc, name in zip(self.procs, self._names()):
                if not proc.running():
                    raise ClusterError(f"{name} died:\n{_tail(self.logs / f'{name}.log')}")
            try:
                seen = self.status()
            except OSError:
                seen = {}
            return seen.get("status") == "ALIVE" and seen.get("aliveworkers") == self.workers

        if not poll(ready, self.ready_timeout, 0.3):
            raise ClusterError(
                f"cluster not ready in {self.ready_timeout:.0f} s (master says "
                f"{seen.get('status')}, {seen.get('aliveworkers')}/{self.workers} "
                f"workers); logs in {self.log_dir}"
            )

    def _names(self) -> list[str]:
        return ["master"] + [f"worker-{i}" for i in range(len(self.procs) - 1)]


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _default_dir() -> Path:
    from mminterest.config import get_config

    return get_config().home / "spark-cluster"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.spark_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["start", "status", "stop"])
    parser.add_argument(
        "--dir", type=Path, help="logs and cluster.json (default: $MMI_HOME/spark-cluster)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="1g", help="executor memory per worker")
    args = parser.parse_args(argv)
    log_dir = (args.dir or _default_dir()).resolve()
    state = log_dir / STATE_FILE
    if args.action == "start":
        if state.exists() and SparkCluster.load(log_dir).running():
            print(f"already running: {SparkCluster.load(log_dir).master_url}", file=sys.stderr)
            return 1
        cluster = SparkCluster(args.workers, args.cores, args.memory, log_dir).start()
        print(
            f"export MMI_SPARK_MASTER={cluster.master_url}   # UI {cluster.ui_url}, "
            f"pids {cluster.pids}, logs {log_dir}"
        )
        return 0
    if not state.exists():
        print(f"no cluster state in {log_dir}", file=sys.stderr)
        return 1
    cluster = SparkCluster.load(log_dir)
    if args.action == "status":
        alive = [p.pid for p in cluster.procs if p.running()]
        print(f"{cluster.master_url}: {len(alive)}/{len(cluster.procs)} daemons running {alive}")
        return 0 if cluster.running() else 1
    stopped = cluster.stop()
    state.unlink()
    print(f"stopped {len(stopped)} processes: {[p.pid for p in stopped]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
