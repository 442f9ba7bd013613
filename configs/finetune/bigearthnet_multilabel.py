r"""Multi-label classification on BigEarthNet v2 (19 classes), Sentinel-2 L2A.

  python finetune/main.py --config=configs/finetune/bigearthnet_multilabel.py:method=linear \
      --config.encoder=WORKDIR --workdir=workdirs/eval/ben_linear

The dataset's own splits (train + validation to fit, test to score). The default data are the 24
pairs vendored with eofm (8 per split); point data.source_args.root at a full BigEarthNet v2
folder for real numbers. `linear`: per-class sigmoid logistic regression, decay chosen by micro F1
on a quarter of the fitting split; `knn`: the weighted label frequency of the 5 neighbours.
Reports mAP (macro over the classes present, micro) and F1 (micro, macro) at 0.5.

Expected with a random SMARTIES tiny, 2 CPU cores: linear mAP macro 0.77, micro 0.49 (about 16 s);
with 12 fitting examples the probe picks the largest decay, so F1 barely moves between encoders.
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, method="linear")
    c = eval_config.classification(method=args.method)
    c.data.update(
        source="bigearthnet_s1s2",
        source_args={"keys": ("s2",)},
        key="s2",
        train_splits=("train", "validation"),
        test_split="test",
    )
    c.fit.finetune = args.method == "finetune"
    c.knn.k = 5
    return c
