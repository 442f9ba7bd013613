r"""Bi-temporal change detection on Landsat (6 bands): Siamese frozen encoder + UPerNet.

  python finetune/main.py --config=configs/finetune/landsat_change.py \
      --config.encoder=WORKDIR --workdir=workdirs/eval/landsat_cd
  # concatenation instead of difference:  --config.head.fusion=concat

Trained on Nanjing (Landsat 5 TM, 2000 vs 2002), scored on Taizhou (Landsat 7 ETM+, 2000 vs 2003):
a transfer across sites and sensors. The references are sparse (changed / unchanged pixels marked,
the rest unlabelled): only labelled pixels train and count. Reports precision, recall, F1 and IoU
of the change class. Only sensor-agnostic encoders (SMARTIES) read Landsat bands natively.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.dense("change_detection")
    c.data.update(
        source="landsat_change",
        source_args={"root": "../shared/data/landsat_cd_taizhou_nanjing"},
        inputs=("t1", "t2"),
        train_ids=("Nanjing",),
        test_ids=("Taizhou",),
    )
    return c
