"""Process helpers for the local services: free ports, polling, and stopping processes by their ids.

A process is identified by (pid, start time) so that a recycled pid is never signalled; psutil
reads both. A zombie counts as gone: its parent reaps it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import psutil
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def poll(check: Callable[[], T], timeout: float, interval: float) -> T:
    """Call `check` every `interval` s until it returns a truthy value or `timeout` s have passed;
    returns its last value. An exception of `check` ends the polling and propagates."""
    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value),
        retry_error_callback=_last_result,
    )(check)


def _last_result(state: RetryCallState):
    assert state.outcome is not None  # tenacity sets it before calling retry_error_callback
    return state.outcome.result()


@dataclass(frozen=True)
class Proc:
    """One process we started (or a descendant of one): pid plus its start time (epoch s)."""

    pid: int
    started: float  # psutil's create_time(), as psutil itself tells a recycled pid apart

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.NoSuchProcess:
            return None

    def process(self) -> psutil.Process | None:
        """The live psutil process of this very (pid, start time), or None (gone or a zombie)."""
        try:
            proc = psutil.Process(self.pid)
            if proc.create_time() == self.started and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.NoSuchProcess:
            pass
        return None

    def running(self) -> bool:
        return self.process() is not None

    def descendants(self) -> list[Proc]:
        """Every live process below this one (children, their children, ...)."""
        proc = self.process()
        if proc is None:
            return []
        found = []
        for child in proc.children(recursive=True):
            try:
                found.append(Proc(child.pid, child.create_time()))
            except psutil.NoSuchProcess:
                pass
        return found


def _signal(procs: Iterable[Proc], kill: bool) -> None:
    for proc in procs:
        if live := proc.process():
            try:
                live.kill() if kill else live.terminate()
            except psutil.NoSuchProcess:
                pass


def stop(procs: list[Proc], timeout: float = 20.0) -> list[Proc]:
    """SIGTERM `procs`, SIGKILL what is left after `timeout`; returns those still alive
    (normally none)."""

    def alive() -> list[Proc]:
        return [p for p in procs if p.running()]

    _signal(procs, kill=False)
    if not poll(lambda: not alive(), timeout, 0.1):
        _signal(alive(), kill=True)
        poll(lambda: not alive(), 5.0, 0.05)
    return alive()
