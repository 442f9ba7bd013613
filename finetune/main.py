r"""Evaluates an encoder on a downstream task (configs/finetune/*.py).

  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=knn \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=DIR
  python finetune/main.py --config=configs/finetune/sen1floods11.py:head=upernet ...

`config.task` picks the runner: classification (knn, linear probe or finetuning, single- or
multi-label) or segmentation / change_detection (a head on the encoder's feature levels). Every run
writes DIR/report.json, DIR/report.md and PNG plots, and prints the metrics; trained heads (and
finetuned encoders) are checkpointed in DIR/fit, and a finished DIR is re-evaluated without
retraining.
"""

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from eofm.eval import classification, dense

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)

RUNNERS = {
    "classification": classification.run,
    "segmentation": dense.run,
    "change_detection": dense.run,
}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    config = _CONFIG.value
    if config.task not in RUNNERS:
        raise app.UsageError(f"unknown task {config.task!r}; expected one of {sorted(RUNNERS)}")
    result = RUNNERS[config.task](config, _WORKDIR.value)
    summary = {k: result[k] for k in ("task", "encoder", "metrics")}
    if result.get("robustness"):
        summary["robustness"] = {
            k: result["robustness"][k] for k in ("clean", "mean_corrupted", "abs_drop", "rel_drop")
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
