r"""Multi-label classification on BigEarthNet (19 or 43 classes), Sentinel-2 L2A.

  python finetune/main.py --config=configs/finetune/bigearthnet_multilabel.py:method=linear \
      --config.encoder=WORKDIR --workdir=workdirs/eval/ben_linear
  ... --config.data.source_args.root=/data/BigEarthNet --config.data.source_args.label_set=43

The dataset's own splits (train + validation to fit, test to score). The default data are the 24
pairs vendored with eofm (8 per split, `datasets.DEMO_DATA`); point data.source_args.root at a
full BigEarthNet folder (metadata.json + patches/, v2 or v1 metadata; label_set=43 needs v1's
"labels_43") for real numbers, or data.test_root at a second folder to score on it (then
data.test_split is optional). `linear`: per-class sigmoid logistic regression, decay chosen by
micro F1 on a quarter of the fitting split; `knn`: the weighted label frequency of the 5
neighbours. Reports mAP (macro over the classes present, micro) and F1 (micro, macro) at 0.5,
beside the majority and image-statistics baselines on the same split.

Expected with a random SMARTIES tiny, 2 CPU cores: linear mAP macro 0.77, micro 0.49 (about 16 s,
plus some seconds for the baselines); with 12 fitting examples the probe picks the largest decay, so
F1 barely moves between encoders. Baselines: majority mAP macro 0.46 (micro 0.46, F1 micro 0.57),
image-statistics probe mAP macro 0.80 (micro 0.57), whose interval on the 8 test patches
(0.73-0.92) overlaps the random encoder's (0.71-0.91).
"""

import ml_collections

from eofm import config_args
from eofm.data import datasets
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, method="linear")
    c = eval_config.classification(method=args.method)
    c.data.update(
        source="bigearthnet_s1s2",
        source_args={"root": str(datasets.DEMO_DATA), "keys": ("s2",), "label_set": 19},
        key="s2",
        train_splits=("train", "validation"),
        test_split="test",
    )
    c.fit.finetune = args.method == "finetune"
    c.knn.k = 5
    return c
