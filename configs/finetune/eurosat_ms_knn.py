r"""kNN probe of a frozen encoder on EuroSAT-MS (13 Sentinel-2 L1C bands).

  python finetune/main.py --config=configs/finetune/eurosat_ms_knn.py \
      --config.encoder=workdirs/demo/smarties_tiny --workdir=workdirs/eval/eurosat_knn
  # a random-init floor:
  python finetune/main.py --config=configs/finetune/eurosat_ms_knn.py \
      --config.encoder=random:configs/pretrain/smarties.py:tiny --workdir=workdirs/eval/random

Stratified 2/3 - 1/3 split of the labelled files (seeded); per-band statistics from the train part;
images normalised with the encoder's pretraining method (override with data.normalization) and
resized to its native size; pooled features; k = 20 cosine kNN with votes weighted by
exp(s / 0.07) (the SMARTIES protocol). Reports OA and balanced accuracy in WORKDIR/report.{json,md}
with a confusion matrix plot. `--config.robustness.corruptions='("all",)'` adds the REOBench-style
sweep (see reobench_eurosat_ms.py).
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="knn")
    c.data.update(source="eurosat_ms", source_args={"root": "../shared/data/eurosat_ms"}, key="s2")
    return c
