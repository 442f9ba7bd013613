"""Writing files so that a crash never leaves a half-written one."""

from __future__ import annotations

import os


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path + ".tmp"`, flushes it to disk, then renames it over `path`; the
    temporary file is removed if anything fails."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
