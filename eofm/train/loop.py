"""The training loop shared by pretraining and finetuning.

    mesh, abstract state  <- config (sizes, sharding rules) and the workload's model, unallocated
    state                 <- newest readable checkpoint in WORKDIR (its config must agree on
                             RESUME_KEYS), else initialised already sharded (and warm-started from
                             another run's weights when the workload says so)
    for step in [start, total):
        batch  <- grain iterator (this process's slice, decoded by `data.num_workers` processes)
                  -> global jax.Arrays on the mesh, put there by a background thread that keeps
                  `data.device_prefetch` batches ready while the previous steps run
        state  <- jitted step(state, batch, fold_in(seed, step))
        check the previous step's loss (one step behind: the host never waits for this step)
        and whether the last asynchronous save failed (without waiting for one still running)
        log metrics.jsonl / TensorBoard / progress line; save checkpoints (async)
        on SIGTERM: save now, wait for the write, return

A run is a pure function of (config, seed): the step rng is derived from the step number and the
data order from the grain iterator state, both restored from the checkpoint, so a resumed run logs
exactly the losses of an uninterrupted one.

The config gives: seed, batch_size, total_steps, warmup_steps, lr, weight_decay, b1, b2,
grad_clip_norm, grad_accum_steps, peak_flops, log_every, mesh (preset, axis sizes, rules),
checkpoint (every_steps, keep, keep_period) and allow_resume_changes (keys of RESUME_KEYS that a
resume may change); `data.num_workers` (-1: sized to the machine, `pipeline.auto_num_workers`)
and `data.device_prefetch` when present, else 0 workers (a finetuning fit's in-memory examples)
and 2 batches.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from eofm import parallel
from eofm.data import pipeline
from eofm.train import checkpoint, optim, validate
from eofm.train import metrics as metrics_lib
from eofm.train import step as step_lib

# Version of the checkpoint layout: TrainState with `frozen`, and the metadata of `Workload.meta`.
CHECKPOINT_FORMAT = 2

# Config keys (with every key under them) that change a run's numbers: the batches and their
# order, the step rngs, the model. Resuming with other values is refused unless
# `allow_resume_changes` names them; the lr schedule, steps, mesh, checkpointing and logging may
# change.
RESUME_KEYS = ("seed", "batch_size", "grad_accum_steps", "model", "data")
# Keys under RESUME_KEYS that do not change the numbers.
RESUME_FREE_KEYS = ("data.num_workers", "data.device_prefetch", "data.prepared_dir")


class ResumeConfigError(ValueError):
    """The config differs from the checkpoint's on keys that change the run's numbers."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the offending tensors."""


@dataclasses.dataclass
class WarmStart:
    """Initial values for some of a model's variables, e.g. another run's newest weights.

    Attributes:
      source: where the values come from (for messages).
      values: {"/"-joined model state path: array}; every path must exist in the model.
      covers: every model path that starts with this prefix must be given ("" = all of them).
    """

    source: str
    values: dict[str, np.ndarray]
    covers: str = ""


@dataclasses.dataclass
class Workload:
    """What the loop trains: a model, its loss, its data and what its checkpoints must carry.

    Attributes:
      name, variant: identify the model in checkpoints (`config.model_name`, "tiny").
      make_model: rngs -> nnx.Module.
      loss_fn: (model, batch, rng) -> (loss, metrics) on a batch of `input_keys`.
      make_dataset: (process_index, process_count) -> batched grain MapDataset.
      input_keys: batch keys passed to the device when a batch has them (others, e.g. string ids,
        stay on the host).
      flops_per_example: model FLOPs of one example's forward + backward (for MFU); 0 if unknown.
      trainable: parameter path -> whether it is trained (None: every nnx.Param); the rest of the
        model is passed to the step as a frozen input.
      lr_scale: parameter path -> lr multiplier (e.g. layer-wise decay); None: 1 everywhere.
      warm_start: () -> WarmStart, applied to a fresh state (not on resume).
      adapt_param: (path, saved array, wanted shape) -> array, for warm-start values of another
        shape (e.g. position tables of another image size).
      meta: JSON metadata the checkpoints carry for their consumers (input specs, normalisation,
        native image size, ...).
      examples: what one example is called in the progress line ("img", "windows").
    """

    name: str
    variant: str
    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: step_lib.LossFn
    make_dataset: Callable[[int, int], grain.MapDataset]
    input_keys: tuple[str, ...]
    flops_per_example: float = 0.0
    trainable: Callable[[str], bool] | None = None
    lr_scale: Callable[[str], float] | None = None
    warm_start: Callable[[], WarmStart] | None = None
    adapt_param: Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    examples: str = "img"


@dataclasses.dataclass
class Result:
    """What `train` returns: the trained model, its step, the last logged metrics, and whether
    SIGTERM stopped the run before `total_steps` (its checkpoint of `step` is then saved)."""

    model: nnx.Module
    step: int
    metrics: dict[str, Any]
    preempted: bool = False


@dataclasses.dataclass
class Setup:
    """The static pieces of a run: model graph, optimizer, abstract sharded state, metadata."""

    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    tx: Any
    schedule: Any
    init: Callable[[], step_lib.TrainState]
    abstract_state: step_lib.TrainState  # ShapeDtypeStructs carrying their target shardings
    state_shardings: Any
    meta: dict[str, Any]

    def model(self, state: step_lib.TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.frozen)


class _Preemption:
    """Records SIGTERM so the loop can checkpoint and exit between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


# ---- set-up ------------------------------------------------------------------------------------


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    return parallel.make_mesh(
        config.mesh.preset,
        **{a: config.mesh[a] for a in parallel.MESH_AXES if config.mesh.get(a) is not None},
    )


def sharding_rules(config: ml_collections.ConfigDict):
    """`config.mesh.rules` (empty: the default table of `eofm.parallel`)."""
    return parallel.rules_from_config(config.mesh.get("rules") or ())


def _trained_filter(trainable: Callable[[str], bool] | None):
    if trainable is None:
        return nnx.Param
    return nnx.All(nnx.Param, lambda path, _: trainable(optim.param_path(path)))


def setup(config: ml_collections.ConfigDict, workload: Workload, mesh: jax.sharding.Mesh) -> Setup:
    """Abstract model and optimizer state with their shardings, without allocating anything."""
    trained = _trained_filter(workload.trainable)
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: workload.make_model(nnx.Rngs(config.seed)))
    graphdef, abstract_params, abstract_frozen = nnx.split(abstract_model, trained, ...)
    scales = None
    if workload.lr_scale is not None:
        scales = optim.map_paths(lambda path, _: workload.lr_scale(path), abstract_params)
    tx, schedule = optim.make_optimizer(
        abstract_params,
        lr=config.lr,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        b1=config.b1,
        b2=config.b2,
        grad_clip_norm=config.get("grad_clip_norm"),
        lr_scales=scales,
    )

    def init() -> step_lib.TrainState:
        with nnx.use_eager_sharding(False):
            model = workload.make_model(nnx.Rngs(config.seed))
        _, params, frozen = nnx.split(model, trained, ...)
        return step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), frozen)

    abstract_state = jax.eval_shape(init)
    state_shardings = parallel.shardings_for(abstract_state, mesh, sharding_rules(config))
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
    param_shapes = {
        optim.param_path(p): list(x.shape)
        for tree in (abstract_params, abstract_frozen)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": workload.name,
        "variant": workload.variant,
        "param_shapes": param_shapes,
        "config": config.to_dict(),
        **workload.meta,
    }
    return Setup(mesh, graphdef, tx, schedule, init, abstract_state, state_shardings, meta)


def compile_step(config: ml_collections.ConfigDict, workload: Workload, plan: Setup):
    """The jitted train step(state, batch, rng) -> (state, metrics) on the run's mesh.

    The step is traced under the mesh, so that model code can pin activations to it
    (`parallel.constrain_activations`) wherever it is called from."""
    mesh = plan.mesh
    batch_sharding = parallel.batch_sharding(mesh)
    step = step_lib.make_train_step(
        plan.graphdef,
        plan.tx,
        plan.schedule,
        workload.loss_fn,
        config.get("grad_accum_steps", 1),
        constrain_batch=lambda batch: parallel.constrain_batch(batch, mesh),
    )

    def step_on_mesh(state, batch, rng):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(state, batch, rng)

    return jax.jit(
        step_on_mesh,
        in_shardings=(plan.state_shardings, batch_sharding, parallel.replicated(mesh)),
        out_shardings=(plan.state_shardings, parallel.replicated(mesh)),
        # Donating the state halves its memory on accelerators, where orbax copies arrays to host
        # before `save` returns. On CPU that copy aliases the device buffers, and a donated buffer
        # would be overwritten by the next step while the async save still reads it.
        donate_argnums=() if jax.default_backend() == "cpu" else 0,
    )


def warm_started(state: step_lib.TrainState, plan: Setup, workload: Workload):
    """`state` with the workload's warm-start values in place and a fresh optimizer state.

    A value of another shape goes through `workload.adapt_param`; unknown paths, uncovered ones
    and shapes that cannot be adapted are one error listing every parameter concerned.
    """
    start = workload.warm_start()
    problems = []
    given = dict(start.values)

    def take(path: str, current: jax.Array):
        value = given.pop(path, None)
        if value is None:
            if path.startswith(start.covers):
                problems.append(f"{path}: not in {start.source}")
            return current
        if value.shape != current.shape:
            if workload.adapt_param is None:
                problems.append(f"{path}: shape {value.shape}, this model needs {current.shape}")
                return current
            value = workload.adapt_param(path, value, current.shape)
        return jax.device_put(np.asarray(value, current.dtype), current.sharding)

    params = optim.map_paths(take, state.params)
    frozen = optim.map_paths(take, state.frozen)
    problems += [f"{path}: not in this model" for path in sorted(given)]
    if problems:
        raise checkpoint.CheckpointMismatchError(
            f"cannot initialise from {start.source}: " + "; ".join(problems[:20])
        )
    logging.info("initialised from %s", start.source)
    opt_state = jax.jit(plan.tx.init, out_shardings=plan.state_shardings.opt_state)(params)
    return step_lib.TrainState(state.step, params, opt_state, frozen)


def restore_model(
    config: ml_collections.ConfigDict, workdir: str | Path, workload: Workload
) -> tuple[int, nnx.Module]:
    """The model of the newest readable checkpoint in `workdir` -> (step, model)."""
    plan = setup(config, workload, make_mesh(config))
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints", read_only=True)
    try:
        restored = ckpt.restore_latest(plan.abstract_state, None, plan.meta)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    step, state = restored
    return step, plan.model(state)


def check_resume_config(
    config: ml_collections.ConfigDict, saved_meta: dict[str, Any], where: Path
) -> None:
    """Raises ResumeConfigError naming each key under RESUME_KEYS whose value in `config` differs
    from the checkpoint's, with both values, unless `config.allow_resume_changes` (comma-separated
    keys) covers it."""
    if "config" not in saved_meta:
        return
    allowed = [k.strip() for k in config.get("allow_resume_changes", "").split(",") if k.strip()]
    saved = _flat(saved_meta["config"])
    current = _flat(json.loads(json.dumps(config.to_dict())))  # tuples as the JSON lists saved
    changed = [
        key
        for key in sorted(saved.keys() | current.keys())
        if _under(key, RESUME_KEYS)
        and not _under(key, (*RESUME_FREE_KEYS, *allowed))
        and saved.get(key) != current.get(key)
    ]
    if changed:
        differences = "; ".join(f"{k}: {_shown(saved, k)} -> {_shown(current, k)}" for k in changed)
        raise ResumeConfigError(
            f"cannot resume from {where}: the config changes keys that change the run's numbers:"
            f" {differences}. Resume with the checkpoint's values, use another --workdir, or"
            f" accept the change: --config.allow_resume_changes={','.join(changed)}"
            " (--config.fit.allow_resume_changes=... for the fit of an evaluation)"
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} of a nested dict (lists are values)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "absent"


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `key` is one of `prefixes` or a key under one ("data.bands" is under "data")."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _check_finite(step: int, metrics: dict[str, Any]) -> None:
    """Raises NonFiniteLossError naming `step` and the parameters with non-finite gradients."""
    loss = float(metrics["loss"])
    if np.isfinite(loss):
        return
    flags = jax.tree_util.tree_flatten_with_path(jax.device_get(metrics["grads_finite"]))[0]
    bad = [optim.param_path(p) for p, ok in flags if not bool(ok)]
    raise NonFiniteLossError(
        f"loss is {loss} at step {step}; non-finite gradients in"
        f" {bad[:10] or 'no parameter (the loss itself overflowed)'}"
        f"{' and more' if len(bad) > 10 else ''}"
    )


# ---- input ------------------------------------------------------------------------------------


def _num_workers(requested: int) -> int:
    """`data.num_workers`, with AUTO_WORKERS sized to this process's share of the host's CPUs."""
    if requested != pipeline.AUTO_WORKERS:
        return requested
    workers = pipeline.auto_num_workers(_processes_on_this_host())
    logging.info("data.num_workers=%d: %d grain worker processes", requested, workers)
    return workers


def _processes_on_this_host() -> int:
    """How many of the run's JAX processes run on this host (same host name); every process
    must call it."""
    if jax.process_count() == 1:
        return 1
    host = np.int32(zlib.crc32(socket.gethostname().encode()) & 0x7FFFFFFF)
    return int(np.sum(multihost_utils.process_allgather(host) == host))


def _on_devices(
    sharding: jax.sharding.Sharding, keys: tuple[str, ...], host_batch: dict[str, Any]
) -> dict[str, jax.Array]:
    """The `keys` of this process's batch as global arrays split by `sharding`, once on the
    devices; the batch's other keys (e.g. string ids) are dropped."""
    batch = {
        k: jax.make_array_from_process_local_data(sharding, host_batch[k])
        for k in keys
        if k in host_batch
    }
    return jax.block_until_ready(batch)


# ---- the loop ----------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str | Path, workload: Workload) -> Result:
    """Runs (or resumes) training to `config.total_steps`; a finished run returns at once."""
    validate.check_training_config(config)
    workdir = validate.check_workdir(workdir)

    # Mesh and abstract state.
    mesh = make_mesh(config)
    logging.info(
        "mesh %s on %d devices (%d processes)",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    plan = setup(config, workload, mesh)

    # Data: this process's slice, batches of global_batch / process_count.
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes"
        )
    dataset = workload.make_dataset(jax.process_index(), jax.process_count())
    data = config.data if "data" in config else ml_collections.ConfigDict()
    batch_sharding = parallel.batch_sharding(mesh)
    iterator = pipeline.make_iterator(
        dataset,
        num_workers=_num_workers(data.get("num_workers", 0)),
        to_device=functools.partial(_on_devices, batch_sharding, workload.input_keys),
        device_prefetch=data.get("device_prefetch", 2),
    )

    # State: resumed, or initialised (and warm-started).
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        keep=config.checkpoint.keep,
        keep_period=config.checkpoint.get("keep_period") or None,
    )
    writer = metrics_lib.MetricsWriter(workdir)
    restored = ckpt.restore_latest(
        plan.abstract_state,
        iterator,
        plan.meta,
        check=functools.partial(check_resume_config, config),
    )
    if restored is None:
        start_step = 0
        writer.truncate_after(0)  # records of a run killed before its first checkpoint
        state = jax.jit(plan.init, out_shardings=plan.state_shardings)()
        if workload.warm_start is not None:
            state = warm_started(state, plan, workload)
    else:
        start_step, state = restored
        writer.truncate_after(start_step)
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)

    # Step.
    train_step = compile_step(config, workload, plan)
    flops_per_step = workload.flops_per_example * config.batch_size
    peak = (config.get("peak_flops") or metrics_lib.measure_peak_flops()) if flops_per_step else 0
    base_key = jax.random.key(config.seed)

    # Loop.
    preemption = _Preemption()
    last: dict[str, Any] = {}
    pending = None  # (step, metrics) whose loss is checked once the next step is dispatched
    window_start, window_steps = time.perf_counter(), 0
    progress = metrics_lib.Progress(
        config.total_steps, config.batch_size, workload.examples, show=jax.process_index() == 0
    )
    done = start_step
    preempted = False
    try:
        # Model code that needs the mesh (shard_map collectives, e.g. CROMA's gathered
        # negatives) finds it in this context.
        with jax.set_mesh(mesh):
            for step in range(start_step, config.total_steps):
                batch = next(iterator)
                state, step_metrics = train_step(state, batch, jax.random.fold_in(base_key, step))
                done = step + 1
                ckpt.check_for_errors()  # a failed save stops the run now, not at the next one
                if pending is not None:
                    _check_finite(*pending)
                pending = (done, step_metrics)
                window_steps += 1
                progress.step_done(done)

                # Metrics.
                logged = done % config.log_every == 0 or done == config.total_steps
                if logged:
                    _check_finite(done, step_metrics)
                    elapsed = time.perf_counter() - window_start
                    scalars = {
                        k: v for k, v in jax.device_get(step_metrics).items() if k != "grads_finite"
                    }
                    last = {
                        **scalars,
                        "images_per_sec": window_steps * config.batch_size / elapsed,
                        "step_time_s": elapsed / window_steps,
                    }
                    if flops_per_step:
                        last["mfu"] = flops_per_step * window_steps / elapsed / peak
                    writer.write(done, last)
                    window_start, window_steps = time.perf_counter(), 0
                if logged or progress.due():
                    progress.show(done, last if logged else jax.device_get(step_metrics))

                # Checkpoints and preemption; a non-finite state is never saved.
                saved = False
                if done % config.checkpoint.every_steps == 0 or done == config.total_steps:
                    _check_finite(done, step_metrics)
                    saved = ckpt.save(done, state, iterator, plan.meta)
                if preemption.requested:
                    if not saved:
                        _check_finite(done, step_metrics)
                        ckpt.save(done, state, iterator, plan.meta, force=True)
                    ckpt.wait()
                    logging.warning("stopped after step %d on SIGTERM; checkpoint saved", done)
                    preempted = True
                    break
            if pending is not None:
                _check_finite(*pending)
    finally:
        preemption.restore()
        iterator.close()
        ckpt.close()
        writer.close()
    return Result(plan.model(state), done, last, preempted)
