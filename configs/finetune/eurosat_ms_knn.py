r"""kNN probe of a frozen encoder on EuroSAT-MS (13 Sentinel-2 L1C bands).

  python finetune/main.py --config=configs/finetune/eurosat_ms_knn.py \
      --config.encoder=workdirs/demo/smarties_tiny --workdir=workdirs/eval/eurosat_knn
  # a random-init floor:
  python finetune/main.py --config=configs/finetune/eurosat_ms_knn.py \
      --config.encoder=random:configs/pretrain/smarties.py:tiny --workdir=workdirs/eval/random

Stratified 2/3 - 1/3 split of the labelled files (seeded); per-band statistics from the train part;
images normalised with the encoder's pretraining method (override with data.normalization) and
resized to its native size; pooled features; k = 20 cosine kNN with votes weighted by
exp(s / 0.07) (the SMARTIES protocol). Reports OA and balanced accuracy in WORKDIR/report.{json,md}.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.probe = "knn"
    c.encoder = "random:configs/pretrain/smarties.py:tiny"
    c.data = ml_collections.ConfigDict(
        dict(
            source="eurosat_ms",
            source_args={"root": "../shared/data/eurosat_ms"},
            key="s2",
            normalization="",  # "" = the encoder's pretraining method
        )
    )
    c.knn = ml_collections.ConfigDict(dict(k=20, metric="cosine", temperature=0.07))
    c.linear = ml_collections.ConfigDict(dict(val_fraction=0.25, steps=200))
    c.test_fraction = 1 / 3
    c.seed = 0
    c.batch_size = 32
    return c
