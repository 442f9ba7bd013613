"""eofm.compilation_cache: a second process loads what the first compiled; EOFM_COMPILATION_CACHE=off,
JAX_ENABLE_COMPILATION_CACHE=false and an unwritable directory leave a process without a cache.
Each case runs in its own process, so the JAX config of the test process is untouched."""

import json
import os
import subprocess
import sys
from pathlib import Path

from eofm import compilation_cache

# Enables the cache, compiles one small program and prints what the cache did.
CHILD = """
import json
import jax
import numpy as np
from jax import monitoring

from eofm import compilation_cache

events = []
monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
directory = compilation_cache.enable()
jax.jit(lambda x: x * 2.0 + 1.0)(np.arange(4.0)).block_until_ready()
print(json.dumps({
    "directory": directory,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "writes": events.count("/jax/compilation_cache/cache_misses"),
}))
"""

# The variables of the test process (conftest points JAX at a cache) that a child must not inherit.
CACHE_SETTINGS = (
    compilation_cache.ENV,
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_ENABLE_COMPILATION_CACHE",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)


def run_children(*settings: dict[str, str]) -> list[tuple[dict, str]]:
    """Runs CHILD once per dict of cache settings (environment variables), all at once;
    [(what it printed, its stderr)]."""
    children = []
    for env in settings:
        child_env = {k: v for k, v in os.environ.items() if k not in CACHE_SETTINGS}
        child_env.update(env, JAX_PLATFORMS="cpu")
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    return results


def entries(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*-cache")}


def test_a_second_process_loads_the_program_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    [(first, _)] = run_children({"EOFM_COMPILATION_CACHE": str(cache)})
    assert first == {"directory": str(cache), "hits": 0, "writes": 1}
    written = entries(cache)
    assert len(written) == 1

    # The directory JAX was given is used as it is.
    [(second, _)] = run_children({"JAX_COMPILATION_CACHE_DIR": str(cache)})
    assert second == {"directory": str(cache), "hits": 1, "writes": 0}
    assert entries(cache) == written


def test_off_or_an_unwritable_directory_leave_the_process_without_a_cache(tmp_path):
    jax_dirs = [tmp_path / "eofm_off", tmp_path / "jax_off"]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    eofm_off, jax_off, unwritable = run_children(
        {"EOFM_COMPILATION_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": str(jax_dirs[0])},
        {"JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_COMPILATION_CACHE_DIR": str(jax_dirs[1])},
        {"EOFM_COMPILATION_CACHE": str(blocker / "cache")},
    )
    no_cache = {"directory": None, "hits": 0, "writes": 0}
    assert eofm_off[0] == jax_off[0] == unwritable[0] == no_cache
    assert not any(d.exists() and entries(d) for d in jax_dirs)
    assert f"no JAX compilation cache: cannot write to {blocker / 'cache'}" in unwritable[1]


def test_the_directory_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_directory() == tmp_path / "eofm" / "jax"
    monkeypatch.setenv(compilation_cache.ENV, "~/jax_cache")
    assert compilation_cache.chosen_directory() == Path.home() / "jax_cache"
    for off in ("off", "OFF", "0", ""):
        monkeypatch.setenv(compilation_cache.ENV, off)
        assert compilation_cache.chosen_directory() is None
    assert compilation_cache.chosen_directory(tmp_path / "given") == tmp_path / "given"
