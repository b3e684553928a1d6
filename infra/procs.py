"""Process helpers for the local services: free ports, and stopping processes by their own ids.

A process is identified by (pid, start time) so that a recycled pid is never signalled. Linux only
(reads /proc).
"""
from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()


@dataclass(frozen=True)
class Proc:
    """One process we started (or a descendant of one): pid plus kernel start time."""

    pid: int
    started: int  # clock ticks since boot (field 22 of /proc/PID/stat)

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        fields = _stat(pid)
        return cls(pid, int(fields[19])) if fields else None

    def running(self) -> bool:
        """True while this very process exists and is not a zombie."""
        fields = _stat(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.started

    def descendants(self) -> list[Proc]:
        """Every live process below this one (children, their children, ...)."""
        parents: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (fields := _stat(int(entry.name))):
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
        out, todo = [], list(parents.get(self.pid, []))
        while todo:
            pid = todo.pop()
            if proc := Proc.of(pid):
                out.append(proc)
            todo.extend(parents.get(pid, []))
        return out


def _signal(procs: Iterable[Proc], sig: int) -> None:
    for proc in procs:
        if proc.running():
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass


def stop(procs: list[Proc], timeout: float = 20.0) -> list[Proc]:
    """SIGTERM `procs` in order, SIGKILL what is left after `timeout`; returns those still alive
    (normally none). Zombies count as gone: their parent reaps them."""
    _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.running() for p in procs):
        time.sleep(0.1)
    left = [p for p in procs if p.running()]
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.running() for p in left):
            time.sleep(0.05)
    return [p for p in procs if p.running()]
