r"""Pretrains a model from an ml_collections config.

  python pretrain/main.py --config=configs/pretrain/mae.py:tiny --workdir=workdirs/mae_tiny \
      [--config.total_steps=300 --config.batch_size=32 --config.seed=0 --config.mesh.preset=fsdp]

A workdir that holds checkpoints resumes from the newest readable one. SIGTERM saves a checkpoint
and exits. Multi-host: on TPU pods / SLURM `jax.distributed` is initialised automatically; elsewhere
pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I to every process.
"""

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from eofm import parallel
from eofm.train import loop, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    result = loop.train(config, _WORKDIR.value, pretrain.workload(config, _WORKDIR.value))
    if result.metrics:
        print(f"process {jax.process_index()}/{jax.process_count()}: finished at loss"
              f" {result.metrics['loss']:.6f}", flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
