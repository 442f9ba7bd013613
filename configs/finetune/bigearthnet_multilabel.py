r"""Multi-label classification on BigEarthNet v2 (19 classes), Sentinel-2 L2A, linear probe.

  python finetune/main.py --config=configs/finetune/bigearthnet_multilabel.py \
      --config.encoder=WORKDIR --workdir=workdirs/eval/ben_linear

The dataset's own splits (train + validation to fit, test to score). The default data are the 24
pairs vendored with eofm (8 per split); point data.source_args.root at a full BigEarthNet v2
folder for real numbers. Per-class sigmoid logistic regression, decay chosen by micro F1 on a
quarter of the fitting split; reports mAP (macro over the classes present, micro) and F1 (micro,
macro) at 0.5. `--config.method=knn` gives the weighted label frequency of the 20 neighbours.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="linear")
    c.data.update(
        source="bigearthnet_s1s2",
        source_args={"keys": ("s2",)},
        key="s2",
        train_splits=("train", "validation"),
        test_split="test",
    )
    c.knn.k = 5
    return c
