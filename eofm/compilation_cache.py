"""JAX's persistent compilation cache, on by default for the entry points: a resumed run, a second
evaluation or a sweep point loads the executables an earlier process compiled (train step,
evaluation steps, initialisation) instead of compiling them again.

    compilation_cache.enable()   # in main(), after the flags, before anything is compiled

The directory is `$EOFM_COMPILATION_CACHE` when that is set ("off", "0" or "" turn the cache off,
even one JAX was given through `JAX_COMPILATION_CACHE_DIR`); else JAX's own settings hold
(`JAX_ENABLE_COMPILATION_CACHE=false`: no cache, `JAX_COMPILATION_CACHE_DIR`: that directory);
else `$XDG_CACHE_HOME/eofm/jax` (default `~/.cache/eofm/jax`). It grows without bound: delete it
to clear it. A directory that cannot be written leaves the run without a cache, with a warning.

Sharing: entries are files named by a hash of the program, the devices, the compile options, the
cache directory and the jax/XLA versions. JAX writes a missing entry in place (no temporary file
and rename, no lock) and never overwrites one; in a multi-process run only process 0 writes, so
the processes on other hosts load only from a directory every host sees. A process that reads an
entry while another is still writing it, or an entry another machine compiled that this one
cannot load (an XLA:CPU executable for CPU features this host lacks), gets a warning and compiles
the program itself, so processes (sweep points, the processes of a run) can share one directory.
The cache is trusted: anyone who can write to it can run code in the processes that read it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import jax

ENV = "EOFM_COMPILATION_CACHE"
OFF = ("off", "0", "")
# Programs that compile faster than this are not written. 0 writes every program: on CPU even a
# program of two ops takes tenths of a second to compile and milliseconds to load (entry ~4 KB).
MIN_COMPILE_TIME_S = 0.0


def default_directory() -> Path:
    """`$XDG_CACHE_HOME/eofm/jax`, or `~/.cache/eofm/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eofm" / "jax"


def chosen_directory(directory: str | os.PathLike | None = None) -> Path | None:
    """The cache directory by the rules of the module docstring; None: no cache."""
    if directory is not None:
        return Path(directory)
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return None if value.lower() in OFF else Path(value).expanduser()
    if not jax.config.jax_enable_compilation_cache:
        return None
    given = jax.config.jax_compilation_cache_dir
    return Path(given) if given else default_directory()


def writable(directory: Path) -> str | None:
    """None when files can be created in `directory` (made if missing), else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def enable(directory: str | os.PathLike | None = None) -> str | None:
    """Turns the persistent compilation cache on (or off), before the first compilation.

    Args:
      directory: the cache directory; None: the one the module docstring describes.

    Returns:
      The directory in use, or None when the run has no cache.
    """
    path = chosen_directory(directory)
    problem = None if path is None else writable(path)
    if path is None or problem is not None:
        jax.config.update("jax_enable_compilation_cache", False)
        if problem is not None:
            logging.warning("no JAX compilation cache: cannot write to %s (%s)", path, problem)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    logging.info("JAX compilation cache in %s (%s=off turns it off)", path, ENV)
    return str(path)
