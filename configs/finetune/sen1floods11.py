r"""Water segmentation on Sen1Floods11 (Sentinel-2 L1C, 13 bands): a head on the frozen encoder's
feature levels.

  python finetune/main.py --config=configs/finetune/sen1floods11.py:head=upernet \
      --config.encoder=WORKDIR --workdir=workdirs/eval/floods
  python finetune/main.py --config=configs/finetune/sen1floods11.py:head=linear ...

The sample has one 512 x 512 hand-labelled chip: its bottom quarter is held out (no training window
touches it) and scored by sliding windows of the encoder's native size. Labels -1 (nodata) are
neither trained on nor scored. UPerNet (128 channels, GroupNorm) or the linear head, 300 steps of
batch 8, checkpoints in WORKDIR/fit. With the full hand-labelled set, set data.source_args.root to
it and use data.train_ids / data.test_ids (or the official split lists) instead of test_region.
Use data.inputs=("s1",) for the radar input.

Expected with a random SMARTIES tiny (`random:configs/pretrain/smarties.py:tiny`), 2 CPU cores, a
few minutes: upernet miou_macro 0.675, iou_micro 0.896 (IoU no_water 0.943, water 0.407; 65,526
labelled test pixels) with the default inverse-frequency class weights (no_water 0.75, water
1.50); 0.654 with fit.class_weights="none" (0.65 before the weights). At the water probability
threshold with the best training F1 (0.63): miou_macro 0.662, water F1 0.550 (0.861 on the
training pixels). Best baseline: MNDWI (B03, B11) thresholded on the training pixels, miou_macro
0.702 (above the encoder); every pixel no_water: 0.464.
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, head="upernet")
    c = eval_config.dense("segmentation")
    c.data.update(
        source="sen1floods11",
        source_args={"root": "../shared/data/sen1floods11_sample"},
        inputs=("s2",),
    )
    c.head.kind = args.head
    c.test_region = (0.75, 0.0, 0.25, 1.0)
    return c
