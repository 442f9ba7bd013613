r"""Evaluates an encoder on a downstream task (configs/finetune/*.py).

  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=knn \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=DIR
  python finetune/main.py --config=configs/finetune/sen1floods11.py:head=upernet ...

`config.task` picks the runner: classification (knn, linear probe or finetuning, single- or
multi-label) or segmentation / change_detection (a head on the encoder's feature levels). Every run
writes DIR/report.json, DIR/report.md and PNG plots, and prints the metrics; trained heads (and
finetuned encoders) are checkpointed in DIR/fit, and a finished DIR is re-evaluated without
retraining.

The task, the workdir and the `fit` block of runs that train a head (segmentation, change
detection, classification with method=finetune) are checked before any compute: a value that
cannot work is a one-line error naming the key. Logs are quiet by default; --verbosity=0 (or -v 0)
shows the INFO logs of orbax, grain and jax as well. Compiled programs go to JAX's persistent
compilation cache, as for pretrain/main.py (EOFM_COMPILATION_CACHE=off turns it off).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from eofm import compilation_cache, logs
from eofm.eval import classification, dense
from eofm.eval import fit as fit_lib
from eofm.train import validate, workdir_lock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)

RUNNERS = {
    "classification": classification.run,
    "segmentation": dense.run,
    "change_detection": dense.run,
}


def trains_a_head(config) -> bool:
    """Whether the run trains in the shared loop with its `fit` block."""
    return config.task != "classification" or config.method == "finetune"


def check(config, workdir: str) -> None:
    """Checks the task, the workdir and, when the run trains a head, its `fit` block."""
    if config.task not in RUNNERS:
        raise validate.ConfigError(
            f"config key task = {config.task!r}; allowed: {', '.join(sorted(RUNNERS))}"
        )
    validate.check_workdir(workdir)
    validate.check_source_args(config.data.source, config.data.source_args)
    if trains_a_head(config):
        if not 0 <= config.fit.warmup_fraction <= 1:
            raise validate.ConfigError(
                f"config key fit.warmup_fraction = {config.fit.warmup_fraction!r}; allowed: 0 to 1"
            )
        validate.check_training_config(fit_lib.training_config(config), "fit.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.configure_from_flags()
    compilation_cache.enable()
    config = _CONFIG.value
    try:
        check(config, _WORKDIR.value)
        with workdir_lock.hold(_WORKDIR.value, what="evaluation"):
            result = RUNNERS[config.task](config, _WORKDIR.value)
    except (validate.ConfigError, workdir_lock.WorkdirLockedError) as e:
        sys.exit(f"finetune/main.py: {e}")
    summary = {k: result[k] for k in ("task", "encoder", "metrics")}
    if result.get("robustness"):
        summary["robustness"] = {
            k: result["robustness"][k] for k in ("clean", "mean_corrupted", "abs_drop", "rel_drop")
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
