r"""Pretrains a model from an ml_collections config.

  python pretrain/main.py --config=configs/pretrain/mae.py:tiny --workdir=workdirs/mae_tiny \
      [--config.total_steps=300 --config.batch_size=32 --config.seed=0 --config.mesh.preset=fsdp]

The config and the workdir are checked before any data is prepared: a value that cannot work
(e.g. a batch that does not split over the mesh) is a one-line error naming the key. A workdir
that holds checkpoints resumes from the newest readable one.

SIGTERM saves a checkpoint, prints the step and where it was saved, and exits with status 0, as a
finished run does: run the same command again to resume (a scheduler that requeues preempted jobs
does exactly that).

Multi-host: on TPU pods / SLURM `jax.distributed` is initialised automatically; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I to every process (all three or
none). A process that does not see all N join within --distributed_timeout_s exits with status 1.

Logs are quiet by default (progress lines, eofm's messages, warnings); --verbosity=0 (or -v 0)
shows the INFO logs of orbax, grain and jax as well.

Compiled programs go to JAX's persistent compilation cache (~/.cache/eofm/jax;
EOFM_COMPILATION_CACHE=DIR moves it, EOFM_COMPILATION_CACHE=off turns it off): a resumed run or
another run of the same model loads its train step instead of compiling it again.
"""

import sys
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from eofm import compilation_cache, logs, parallel
from eofm.train import checkpoint, loop, pretrain, validate, workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", 300, "Seconds each process waits for all --num_processes to join."
)


# Errors whose message says all: printed as one line instead of a traceback.
RUN_REFUSED = (
    validate.ConfigError,
    workdir_lock.WorkdirLockedError,
    loop.ResumeConfigError,
    checkpoint.CheckpointMismatchError,
    checkpoint.CheckpointSaveError,
)


def run(config, workdir: str) -> loop.Result:
    """Checks the config and the workdir, then prepares the data and trains."""
    validate.check_workdir(workdir)
    validate.check_training_config(config)
    with workdir_lock.hold(workdir):
        return loop.train(config, workdir, pretrain.workload(config, workdir))


def summary(result: loop.Result, workdir: str) -> str:
    """The line a run ends with: its final loss, or where SIGTERM left its checkpoint."""
    process = f"process {jax.process_index()}/{jax.process_count()}"
    if result.preempted:
        saved = Path(workdir).absolute() / "checkpoints" / str(result.step)
        return (
            f"{process}: stopped at step {result.step} on SIGTERM; checkpoint saved in {saved}"
            " (run the same command to resume)"
        )
    if result.metrics:
        return f"{process}: finished at loss {result.metrics['loss']:.6f}"
    return f"{process}: {workdir} is already at step {result.step}; nothing to train"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.configure_from_flags()
    compilation_cache.enable()
    try:
        parallel.initialize_distributed(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            timeout_s=_DISTRIBUTED_TIMEOUT.value,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    try:
        result = run(_CONFIG.value, _WORKDIR.value)
    except RUN_REFUSED as e:
        sys.exit(f"pretrain/main.py: {e}")
    print(summary(result, _WORKDIR.value), flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
