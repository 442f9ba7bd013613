"""The training loop shared by pretraining and finetuning.

    state <- restore newest readable checkpoint in WORKDIR, else initialise (already sharded)
    for step in [start, total):
        batch  <- grain iterator (this process's slice) -> global jax.Arrays on the mesh
        state  <- jitted step(state, batch, fold_in(seed, step))
        stop with a named error if the loss is NaN/Inf
        log metrics.jsonl / TensorBoard / progress line; save checkpoints (async)
        on SIGTERM: save now, wait for the write, return

A run is a pure function of (config, seed): the step rng is derived from the step number and the
data order from the grain iterator state, both restored from the checkpoint, so a resumed run logs
exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from eofm import parallel
from eofm.data import pipeline
from eofm.train import checkpoint, optim
from eofm.train import metrics as metrics_lib
from eofm.train import step as step_lib


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the offending tensors."""


@dataclasses.dataclass
class Task:
    """What the loop needs to know about a model and its data.

    Attributes:
      name, variant: identify the model in checkpoints ("mae", "tiny").
      make_model: rngs -> nnx.Module.
      loss_fn: (model, batch, rng) -> (loss, metrics) on a batch of `input_keys`.
      make_dataset: (process_index, process_count) -> batched grain MapDataset.
      input_keys: batch keys passed to the device (others, e.g. string ids, stay on the host).
      flops_per_example: model FLOPs of one example's forward + backward (for MFU); 0 if unknown.
      optimizer_kwargs: extra arguments of `optim.make_optimizer` (frozen, lr_scales, ...).
      adapt_param: (path, saved array, wanted shape) -> array, for `init_from` checkpoints whose
        parameter shapes differ (e.g. position tables of another image size).
    """

    name: str
    variant: str
    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: step_lib.LossFn
    make_dataset: Callable[[int, int], grain.MapDataset]
    input_keys: tuple[str, ...]
    flops_per_example: float = 0.0
    optimizer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    adapt_param: Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray] | None = None


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


def check_workdir(workdir: Path) -> None:
    """Creates `workdir` and proves it writable, with an error naming it otherwise."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"workdir {workdir} is not writable: {e.strerror or e}") from e


def _named_nonfinite(tree: Any) -> list[str]:
    flags = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [optim.param_path(p) for p, ok in flags if not bool(ok)]


@dataclasses.dataclass
class Setup:
    """The static pieces of a run: model graph, optimizer, abstract sharded state, metadata."""

    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    tx: Any
    schedule: Any
    init: Callable[[], tuple[step_lib.TrainState, nnx.State]]  # -> (state, non-param variables)
    abstract_state: step_lib.TrainState  # ShapeDtypeStructs carrying their target shardings
    state_shardings: Any
    rest_shardings: Any
    meta: dict[str, Any]


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    return parallel.make_mesh(
        config.mesh.preset,
        **{a: config.mesh[a] for a in parallel.MESH_AXES if config.mesh.get(a) is not None},
    )


def setup(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh) -> Setup:
    """Abstract model and optimizer state with their shardings, without allocating anything."""
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: task.make_model(nnx.Rngs(config.seed)))
    graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
    tx, schedule = optim.make_optimizer(
        abstract_params,
        lr=config.lr,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        b1=config.b1,
        b2=config.b2,
        grad_clip_norm=config.get("grad_clip_norm"),
        **task.optimizer_kwargs,
    )

    def init():
        with nnx.use_eager_sharding(False):
            model = task.make_model(nnx.Rngs(config.seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), rest

    abstract_state, abstract_rest = jax.eval_shape(init)
    state_shardings = parallel.shardings_for(abstract_state, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
    param_shapes = {
        optim.param_path(p): list(x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    }
    meta = {
        "model": task.name,
        "variant": task.variant,
        "param_shapes": param_shapes,
        "config": config.to_dict(),
    }
    return Setup(
        mesh,
        graphdef,
        tx,
        schedule,
        init,
        abstract_state,
        state_shardings,
        parallel.shardings_for(abstract_rest, mesh),
        meta,
    )


def params_from_run(source_workdir: str | Path, run: Setup, task: Task) -> nnx.State:
    """This run's parameters taken from the newest checkpoint of another run (fresh optimizer).

    Parameters with the same path and shape are copied; a different shape goes through
    `task.adapt_param`; anything else is an error listing every parameter concerned.
    """
    ckpt = checkpoint.Checkpointer(Path(source_workdir) / "checkpoints")
    try:
        step, saved = ckpt.latest_params()
    finally:
        ckpt.close()
    problems = []

    def take(path: str, abstract: jax.ShapeDtypeStruct):
        value = saved.get(path)
        if value is None:
            problems.append(f"{path}: not in the checkpoint")
            return None
        if value.shape != abstract.shape:
            if task.adapt_param is None:
                problems.append(f"{path}: shape {value.shape}, this model needs {abstract.shape}")
                return None
            value = task.adapt_param(path, value, abstract.shape)
        return jax.device_put(np.asarray(value, abstract.dtype), abstract.sharding)

    params = optim.map_paths(take, run.abstract_state.params)
    if problems:
        raise checkpoint.CheckpointMismatchError(
            f"cannot initialise from {source_workdir} (step {step}): " + "; ".join(problems[:20])
        )
    logging.info("initialised from %s at step %d", source_workdir, step)
    return params


def restore_model(
    config: ml_collections.ConfigDict, workdir: str | Path, task: Task
) -> tuple[int, nnx.Module]:
    """The model of the newest readable checkpoint in `workdir` -> (step, model)."""
    run = setup(config, task, make_mesh(config))
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints")
    try:
        restored = ckpt.restore_latest(run.abstract_state, None, run.meta)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    step, state = restored
    rest = jax.jit(lambda: run.init()[1], out_shardings=run.rest_shardings)()
    return step, nnx.merge(run.graphdef, state.params, rest)


def train(config: ml_collections.ConfigDict, workdir: str | Path, task: Task) -> dict[str, Any]:
    """Runs (or resumes) training to `config.total_steps`; returns the last logged metrics."""
    workdir = Path(workdir)
    check_workdir(workdir)
    mesh = make_mesh(config)
    logging.info(
        "mesh %s on %d devices (%d processes)",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    run = setup(config, task, mesh)
    graphdef, tx, schedule, init = run.graphdef, run.tx, run.schedule, run.init
    state_shardings, rest_shardings = run.state_shardings, run.rest_shardings
    abstract_state, meta = run.abstract_state, run.meta

    # Data: this process's slice, batches of global_batch / process_count.
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes"
        )
    dataset = task.make_dataset(jax.process_index(), jax.process_count())
    iterator = pipeline.make_iterator(dataset, num_workers=config.data.get("num_workers", 0))

    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        keep=config.checkpoint.keep,
        keep_period=config.checkpoint.get("keep_period") or None,
    )
    writer = metrics_lib.MetricsWriter(workdir)
    restored = ckpt.restore_latest(abstract_state, iterator, meta)
    rest = jax.jit(lambda: init()[1], out_shardings=rest_shardings)()
    if restored is None:
        start_step = 0
        state = jax.jit(lambda: init()[0], out_shardings=state_shardings)()
        if config.get("init_from"):
            params = params_from_run(config.init_from, run, task)
            state = step_lib.TrainState(
                state.step,
                params,
                jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params),
            )
    else:
        start_step, state = restored
        writer.truncate_after(start_step)
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)

    train_step = jax.jit(
        step_lib.make_train_step(
            graphdef, rest, tx, schedule, task.loss_fn, config.get("grad_accum_steps", 1)
        ),
        in_shardings=(state_shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        # Donating the state halves its memory on accelerators, where orbax copies arrays to host
        # before `save` returns. On CPU that copy aliases the device buffers, and a donated buffer
        # would be overwritten by the next step while the async save still reads it.
        donate_argnums=() if jax.default_backend() == "cpu" else 0,
    )

    peak = config.get("peak_flops") or metrics_lib.measure_peak_flops()
    flops_per_step = task.flops_per_example * config.batch_size
    base_key = jax.random.key(config.seed)
    batch_sharding = parallel.batch_sharding(mesh)
    preemption = _Preemption()
    last: dict[str, Any] = {}
    window_start, window_steps = time.perf_counter(), 0
    run_start, run_steps = time.perf_counter(), 0
    try:
        # Model code that needs the mesh (shard_map collectives, e.g. CROMA's gathered
        # negatives) finds it in this context.
        with jax.set_mesh(mesh):
            for step in range(start_step, config.total_steps):
                host_batch = next(iterator)
                batch = {
                    k: jax.make_array_from_process_local_data(batch_sharding, host_batch[k])
                    for k in task.input_keys
                }
                state, step_metrics = train_step(state, batch, jax.random.fold_in(base_key, step))
                loss = float(step_metrics["loss"])
                if not np.isfinite(loss):
                    bad = _named_nonfinite(step_metrics["grads_finite"])
                    raise NonFiniteLossError(
                        f"loss is {loss} at step {step + 1}; non-finite gradients in"
                        f" {bad[:10] or 'no parameter (the loss itself overflowed)'}"
                        f"{' and more' if len(bad) > 10 else ''}"
                    )
                window_steps += 1
                run_steps += 1
                done = step + 1
                if done % config.log_every == 0 or done == config.total_steps:
                    elapsed = time.perf_counter() - window_start
                    scalars = {
                        k: v for k, v in jax.device_get(step_metrics).items() if k != "grads_finite"
                    }
                    images_per_sec = window_steps * config.batch_size / elapsed
                    last = {
                        **scalars,
                        "images_per_sec": images_per_sec,
                        "step_time_s": elapsed / window_steps,
                    }
                    if flops_per_step:
                        last["mfu"] = flops_per_step * window_steps / elapsed / peak
                    writer.write(done, last)
                    rate = (time.perf_counter() - run_start) / run_steps
                    if jax.process_index() == 0:
                        print(
                            metrics_lib.progress_line(
                                done, config.total_steps, last, rate * (config.total_steps - done)
                            ),
                            flush=True,
                        )
                    window_start, window_steps = time.perf_counter(), 0
                saved = False
                if done % config.checkpoint.every_steps == 0 or done == config.total_steps:
                    saved = ckpt.save(done, state, iterator, meta)
                if preemption.requested:
                    if not saved:
                        ckpt.save(done, state, iterator, meta, force=True)
                    ckpt.wait()
                    logging.warning("stopped after step %d on SIGTERM; checkpoint saved", done)
                    break
    finally:
        preemption.restore()
        ckpt.close()
        writer.close()
    return last
