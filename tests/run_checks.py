"""Helpers for tests that prove a run stopped early or left a directory alone."""

from pathlib import Path


def must_not_run(*args, **kwargs):
    """A stand-in for a step that a run must not reach."""
    raise AssertionError("reached after the check that should have stopped the run")


def listing(directory: Path) -> dict[str, tuple[int, int, int]]:
    """{path relative to `directory` ("." for itself): (mode, size, mtime_ns)} of all it holds."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
        for p in (directory, *directory.rglob("*"))
    }
