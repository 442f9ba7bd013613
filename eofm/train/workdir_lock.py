"""One run per workdir: WORKDIR/.lock, held by process 0 of a run while it writes there.

    with workdir_lock.hold(workdir):          # WorkdirLockedError if another run holds it
        ...

The lock file is created atomically (O_CREAT | O_EXCL) and holds JSON: host, pid, start time
(UTC) and what the run does. A lock left by a dead process of this host is taken over with a
warning; one of another host cannot be checked from here, so it is an error that says how to remove
it. Holding is re-entrant within a process (an entry point and the training loop may both hold it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

LOCK_NAME = ".lock"

_held: dict[Path, int] = {}  # lock path -> how many `hold`s of this process are open on it


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir; the message names it and how to proceed."""


@contextlib.contextmanager
def hold(workdir: str | Path, *, what: str = "training") -> Iterator[None]:
    """Holds WORKDIR/.lock for the block (process 0 only); released on exit and on errors."""
    if jax.process_index() != 0:
        yield
        return
    path = (Path(workdir) / LOCK_NAME).absolute()
    if path not in _held:
        _acquire(path, what)
    _held[path] = _held.get(path, 0) + 1
    try:
        yield
    finally:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
            _release(path)


def _this_process(what: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "what": what,
    }


def _acquire(path: Path, what: str) -> None:
    """Creates the lock, after removing a stale one; WorkdirLockedError if a run holds it."""
    record = _this_process(what)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _remove_if_stale(path, _read(path))
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; None if it is gone or not (yet) a whole JSON record."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"{holder.get('what', 'a run')} on host {holder.get('host')!r}, pid {holder.get('pid')},"
        f" since {holder.get('since')}"
    )


def _remove_if_stale(path: Path, holder: dict[str, Any] | None) -> None:
    """Removes the lock of a dead process of this host; raises WorkdirLockedError for a live one
    or one that cannot be checked."""
    if holder is None:
        if not path.exists():
            return  # released meanwhile: try again
        raise WorkdirLockedError(
            f"{path.parent} is locked by {path}, which is not a lock record (being written, or"
            f" damaged); if no run uses this workdir, remove {path}"
        )
    if holder.get("host") != socket.gethostname():
        raise WorkdirLockedError(
            f"{path.parent} is in use by {_describe(holder)}; this host cannot tell whether that"
            f" run is alive. If it is not, remove {path} and start again"
        )
    if _alive(holder.get("pid")):
        raise WorkdirLockedError(
            f"{path.parent} is in use by {_describe(holder)}; wait for it to end, stop it, or use"
            " another --workdir"
        )
    logging.warning("taking over %s, left by %s, a process that has ended", path, _describe(holder))
    _remove_unless_replaced(path, holder)


def _alive(pid: Any) -> bool:
    """Whether a process `pid` runs on this host (this very process's own pid, left in a lock it
    does not hold, is a leftover: not alive)."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_unless_replaced(path: Path, holder: dict[str, Any]) -> None:
    """Removes the lock if it still holds `holder` (another run may have replaced it since)."""
    moved = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, moved)  # atomic: of two runs taking over, one moves it
    except FileNotFoundError:
        return
    if _read(moved) == holder:
        moved.unlink()
    else:
        os.rename(moved, path)  # a lock made since: put it back


def _release(path: Path) -> None:
    """Removes the lock if this process holds it."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink()
    else:
        logging.warning("%s no longer names this process (%s); left in place", path, holder)
