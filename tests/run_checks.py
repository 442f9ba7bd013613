"""Helpers for tests that prove a run stopped early, resumed, or left a directory alone, and that
run the scripts."""

import importlib.util
import sys
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


class CountingSource:
    """Wraps a source, counts reads and raises at index `fail_at` to simulate a crash."""

    def __init__(self, source, fail_at=None):
        self.source, self.fail_at, self.reads = source, fail_at, 0
        self.specs, self.label_names = source.specs, source.label_names

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at {i}")
        self.reads += 1
        return self.source[i]

    def reads_from(self):
        return self.source.reads_from()


def load_script(path: Path):
    """The module of a script (e.g. scripts/infer_scene.py), imported under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
