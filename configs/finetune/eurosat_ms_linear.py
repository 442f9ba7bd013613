r"""Linear probe of a frozen encoder on EuroSAT-MS (13 Sentinel-2 L1C bands).

  python finetune/main.py --config=configs/finetune/eurosat_ms_linear.py \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=workdirs/eval/eurosat_linear

As `eurosat_ms_knn.py`, with an L2-regularised logistic regression (L-BFGS) on standardised
features; the weight decay is chosen on a quarter of the train split (log grid 1e-6 .. 10) and the
probe refitted on the whole train split. Reports OA, balanced accuracy and the chosen decay.
"""

import importlib.util
from pathlib import Path


def get_config():
    spec = importlib.util.spec_from_file_location(
        "eurosat_ms_knn", Path(__file__).with_name("eurosat_ms_knn.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.probe = "linear"
    return c
