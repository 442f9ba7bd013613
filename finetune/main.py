r"""Evaluates a frozen encoder on a downstream task.

  python finetune/main.py --config=configs/finetune/eurosat_ms_knn.py \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=DIR
  python finetune/main.py --config=configs/finetune/eurosat_ms_linear.py ...

Writes DIR/report.json and DIR/report.md and prints the report.
"""

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from eofm.eval import probe

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    report = probe.run_probe(_CONFIG.value, _WORKDIR.value)
    print(json.dumps({k: report[k] for k in ("encoder", "data", "metrics")}, indent=2))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
