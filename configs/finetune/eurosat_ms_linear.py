r"""Linear probe of a frozen encoder on EuroSAT-MS (13 Sentinel-2 L1C bands).

  python finetune/main.py --config=configs/finetune/eurosat_ms_linear.py \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=workdirs/eval/eurosat_linear

As `eurosat_ms_knn.py`, with an L2-regularised logistic regression (L-BFGS) on standardised
features; the weight decay is chosen on a quarter of the train split (log grid 1e-6 .. 10) and the
probe refitted on the whole train split. Reports OA, balanced accuracy and the chosen decay.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="linear")
    c.data.update(source="eurosat_ms", source_args={"root": "../shared/data/eurosat_ms"}, key="s2")
    return c
