"""infra.procs (psutil, tenacity) and the throw-away redis-server: processes are stopped by their
own (pid, start time), a whole tree at once, and a pid with another start time is never signalled."""

import subprocess

from infra.procs import Proc, poll, stop
from infra.redis_server import RedisServer


def test_stop_ends_a_process_tree_and_spares_a_recycled_pid():
    parent = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True)
    try:
        proc = Proc.of(parent.pid)
        below = poll(proc.descendants, timeout=10, interval=0.05)
        assert [p.running() for p in below] == [True]
        impostor = Proc(parent.pid, proc.started - 1)  # same pid, another process's start time
        assert not impostor.running() and stop([impostor], timeout=1) == []
        assert proc.running()  # not signalled
        assert stop([*below, proc], timeout=10) == []
        assert not any(p.running() for p in [*below, proc])
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_poll_returns_the_first_truthy_value_or_the_last_one():
    values = iter([0, None, 7, 8])
    assert poll(lambda: next(values), timeout=5, interval=0.01) == 7
    assert poll(lambda: [], timeout=0.2, interval=0.05) == []


def test_redis_server_answers_ping_and_stops_by_pid():
    with RedisServer() as server:
        assert server.ping() and server.client().set("k", "v")
        proc = server.proc
    assert not proc.running() and not server.ping()
