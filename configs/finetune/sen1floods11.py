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

Expected with a random SMARTIES tiny (`random:configs/pretrain/smarties.py:tiny`), 2 CPU cores:
upernet miou_macro 0.65, iou_micro 0.90 (65,526 labelled test pixels), about 150 s.
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
