"""Checks of a run before any work: its training config and its workdir.

`pretrain/main.py` and `finetune/main.py` call them before data is prepared or anything compiled,
and `eofm.train.loop.train` at its start, so a value that cannot work fails at once with a
`ConfigError` naming the key, its value and what is allowed:

    validate.check_workdir(workdir)
    validate.check_training_config(config)          # a pretraining config
    validate.check_training_config(fit, "fit.")     # the fit block of an evaluation config
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections

from eofm import parallel
from eofm.data import datasets

# Compute and parameter dtypes a model config may name (`model.dtype`, `model.param_dtype`, ...).
DTYPES = ("float32", "bfloat16", "float16")
# Loop fields that count something (at least 1), and those where 0 means "none" or "off".
POSITIVE_INTS = (
    "batch_size",
    "total_steps",
    "log_every",
    "grad_accum_steps",
    "checkpoint.every_steps",
    "checkpoint.keep",
)
NON_NEGATIVE_INTS = ("warmup_steps", "checkpoint.keep_period", "data.device_prefetch")


class ConfigError(ValueError):
    """A config value or the workdir cannot work; the message names it and what is allowed."""


def check_workdir(workdir: str | Path) -> Path:
    """`workdir`, created with its parents and proven writable by this process."""
    path = Path(workdir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"workdir {path} is not writable: {existing} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"workdir {path} is not writable: {e.strerror or e}") from e
    return path


def check_training_config(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Checks the fields `eofm.train.loop.train` reads, and `model.*dtype` and
    `data.source_args` when the config has them.

    Args:
      config: a training config (`eofm.train.config.training` fields).
      prefix: how messages name the config's keys, e.g. "fit." for the fit block of an
        evaluation config.
    """
    for key in POSITIVE_INTS:
        _check_int(config, key, 1, prefix)
    for key in NON_NEGATIVE_INTS:
        _check_int(config, key, 0, prefix)
    _check_int(config, "data.num_workers", -1, prefix)  # -1: sized to the machine
    if not config.warmup_steps <= config.total_steps:
        _fail(
            prefix, "warmup_steps", config.warmup_steps, f"0 to total_steps ({config.total_steps})"
        )
    _check_batch_split(config, prefix)
    if "model" in config:
        _check_dtypes(config.model, f"{prefix}model.")
    if "data" in config and "source_args" in config.data:
        check_source_args(config.data.source, config.data.source_args, prefix)


def check_source_args(source: str, args, prefix: str = "") -> None:
    """The data source's name and arguments (`data.source`, `data.source_args`), read no data."""
    try:
        datasets.check_source_args(source, args)
    except ValueError as e:
        raise ConfigError(f"config key {prefix}data.source_args: {e}") from e
    for key in ("root", "index"):
        if key in args and args[key] == "":
            raise ConfigError(
                f"config key {prefix}data.source_args.{key} is empty: give the path of your data"
                f" (--config.{prefix}data.source_args.{key}=PATH)"
            )


def _fail(prefix: str, key: str, value: Any, allowed: str, why: str = "") -> NoReturn:
    raise ConfigError(
        f"config key {prefix}{key} = {value!r}{': ' + why if why else ''}; allowed: {allowed}"
    )


def _lookup(config: ml_collections.ConfigDict, key: str) -> Any:
    """The value at dotted `key`, or None where the config lacks it."""
    value = config
    for part in key.split("."):
        if not isinstance(value, ml_collections.ConfigDict) or part not in value:
            return None
        value = value[part]
    return value


def _check_int(config: ml_collections.ConfigDict, key: str, least: int, prefix: str) -> None:
    value = _lookup(config, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        _fail(prefix, key, value, f"an integer >= {least}")


def _data_parallel_ways(config: ml_collections.ConfigDict, prefix: str) -> tuple[int, dict]:
    """How many ways the mesh of `config.mesh` splits the batch, and the mesh's axis sizes."""
    preset = config.mesh.get("preset")
    if preset is not None and preset not in parallel.PRESETS:
        _fail(prefix, "mesh.preset", preset, ", ".join(sorted(parallel.PRESETS)))
    sizes = {a: config.mesh[a] for a in parallel.MESH_AXES if config.mesh.get(a) is not None}
    try:
        mesh = parallel.make_mesh(preset, **sizes)
    except ValueError as e:
        raise ConfigError(f"config key {prefix}mesh = {sizes} (preset {preset!r}): {e}") from e
    return math.prod(mesh.shape[a] for a in parallel.BATCH_AXES), dict(mesh.shape)


def _check_batch_split(config: ml_collections.ConfigDict, prefix: str) -> None:
    """The batch splits evenly over processes and data-parallel devices, and each process's share
    into `grad_accum_steps` microbatches."""
    batch_size, processes = config.batch_size, jax.process_count()
    ways, mesh_shape = _data_parallel_ways(config, prefix)
    if batch_size % ways or batch_size % processes:
        _fail(
            prefix,
            "batch_size",
            batch_size,
            f"multiples of {math.lcm(ways, processes)}",
            f"the batch is split over {ways} data-parallel devices (mesh {mesh_shape}, axes"
            f" {parallel.BATCH_AXES}) and {processes} processes",
        )
    accum = config.get("grad_accum_steps", 1)
    per_process = batch_size // processes
    if per_process % accum:
        divisors = [d for d in range(1, per_process + 1) if per_process % d == 0]
        _fail(
            prefix,
            "grad_accum_steps",
            accum,
            f"divisors of {per_process}: {divisors}",
            f"it must divide each process's batch of {per_process} (batch_size {batch_size} /"
            f" {processes} processes)",
        )


def _check_dtypes(model: ml_collections.ConfigDict, prefix: str) -> None:
    """Every `*dtype` field of `model` (nested blocks included) names one of DTYPES."""
    for key, value in model.items():
        if isinstance(value, ml_collections.ConfigDict):
            _check_dtypes(value, f"{prefix}{key}.")
        elif key.endswith("dtype") and _dtype_name(value) not in DTYPES:
            _fail(prefix, key, value, ", ".join(DTYPES))


def _dtype_name(value: Any) -> str | None:
    try:
        return jnp.dtype(value).name
    except TypeError:
        return None
