"""WORKDIR/.lock: a second run on a workdir is refused naming the holder, a lock of a dead process
is taken over, one of another host is refused with how to remove it, and the lock goes with the
run (also on errors)."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from eofm.train import workdir_lock


def _lock(workdir, **record):
    path = workdir / workdir_lock.LOCK_NAME
    path.write_text(
        json.dumps({"since": "2024-05-01T10:00:00+00:00", "what": "training", **record})
    )
    return path


def test_a_live_holder_is_refused_with_its_host_pid_and_start(tmp_path):
    path = _lock(tmp_path, host=socket.gethostname(), pid=os.getppid())  # a live process
    before = path.read_text()
    with pytest.raises(workdir_lock.WorkdirLockedError) as error, workdir_lock.hold(tmp_path):
        pass
    message = str(error.value)
    assert f"pid {os.getppid()}" in message and socket.gethostname() in message
    assert "since 2024-05-01T10:00:00+00:00" in message
    assert path.read_text() == before  # the holder's lock is untouched


def test_a_second_process_is_refused_until_the_first_ends(tmp_path):
    script = (
        "import sys; from eofm.train import workdir_lock\n"
        f"with workdir_lock.hold({str(tmp_path)!r}):\n"
        "    print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid}")
        with refused, workdir_lock.hold(tmp_path):
            pass
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()  # released at its exit
    with workdir_lock.hold(tmp_path):
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = _lock(tmp_path, host=socket.gethostname(), pid=dead.pid)
    with workdir_lock.hold(tmp_path, what="finetuning"):
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["what"] == "finetuning"
    assert "taking over" in caplog.text and f"pid {dead.pid}" in caplog.text
    assert not path.exists()


def test_a_lock_of_another_host_cannot_be_checked(tmp_path):
    path = _lock(tmp_path, host="node-17", pid=4242)
    refused = pytest.raises(workdir_lock.WorkdirLockedError, match=r"cannot tell.*remove .*\.lock")
    with refused, workdir_lock.hold(tmp_path):
        pass
    assert path.exists()


def test_released_on_errors_and_reentrant(tmp_path):
    path = tmp_path / workdir_lock.LOCK_NAME
    with pytest.raises(ValueError, match="boom"), workdir_lock.hold(tmp_path):
        with workdir_lock.hold(tmp_path):  # e.g. an entry point, then the training loop
            assert path.exists()
        assert path.exists()
        raise ValueError("boom")
    assert not path.exists()


def test_only_process_zero_holds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with workdir_lock.hold(tmp_path):
        assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
