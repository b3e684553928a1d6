"""A throw-away redis-server on 127.0.0.1 (free port, no persistence), stopped by its own pid.

    with RedisServer() as r:                  # port=None: a free one
        cfg = load_config(online_store="redis", redis_url=r.url)

`url` is "127.0.0.1:PORT", the form of MMI_REDIS_URL and of Feast's redis `connection_string`;
`redis_py_url` is "redis://127.0.0.1:PORT" for redis-py's `Redis.from_url`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from infra.procs import Proc, free_port, poll, stop

HOST = "127.0.0.1"


class RedisServerError(RuntimeError):
    """redis-server is missing or did not answer PING in time."""


class RedisServer:
    """redis-server bound to 127.0.0.1:`port`; its log goes to `log_dir` (default: a temporary
    folder, removed on stop)."""

    def __init__(
        self,
        port: int | None = None,
        log_dir: Path | None = None,
        ready_timeout: float = 15.0,
        binary: str = "redis-server",
    ) -> None:
        self.port = port
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.binary = binary
        self.proc: Proc | None = None
        self._popen: subprocess.Popen | None = None
        self._temp_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def redis_py_url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> RedisServer:
        exe = shutil.which(self.binary)
        if exe is None:
            raise RedisServerError(f"{self.binary} not found (infra/setup.sh installs it)")
        self.port = self.port or free_port()
        if self.log_dir is None:
            self.log_dir = self._temp_dir = Path(tempfile.mkdtemp(prefix="mmi-redis-"))
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"redis-{self.port}.log"
        self._popen = popen = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.proc = Proc.of(popen.pid)
        if (
            poll(lambda: self.ping() or popen.poll() is not None, self.ready_timeout, 0.05)
            and popen.poll() is None
        ):
            return self
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING:\n{tail}")

    def ping(self) -> bool:
        """True if the server answers PING."""
        import redis

        try:
            with self.client(socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def client(self, **options):
        """A redis-py client of this server (`options`: those of `redis.Redis`)."""
        import redis

        return redis.Redis(host=HOST, port=self.port, **options)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (SIGKILL after `timeout`) and reap; a no-op when not running."""
        if self.proc is not None:
            left = stop([self.proc], timeout)
            if left:
                raise RedisServerError(f"redis-server pid {self.proc.pid} survived SIGKILL")
        if self._popen is not None:
            self._popen.wait(timeout=5)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
