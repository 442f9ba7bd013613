r"""Water segmentation on Sen1Floods11 (Sentinel-2 L1C, 13 bands): UPerNet on a frozen encoder.

  python finetune/main.py --config=configs/finetune/sen1floods11_upernet.py \
      --config.encoder=WORKDIR --workdir=workdirs/eval/floods
  # the linear head:  --config.head.kind=linear

The sample has one 512 x 512 hand-labelled chip: its bottom quarter is held out (no training window
touches it) and scored by sliding windows. Labels -1 (nodata) are neither trained on nor scored.
With the full hand-labelled set, set data.source_args.root to it and use data.train_ids /
data.test_ids (or the official split lists) instead of test_region. Use data.inputs=("s1",) for the
radar input.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.dense("segmentation")
    c.data.update(
        source="sen1floods11",
        source_args={"root": "../shared/data/sen1floods11_sample"},
        inputs=("s2",),
    )
    c.test_region = (0.75, 0.0, 0.25, 1.0)
    return c
