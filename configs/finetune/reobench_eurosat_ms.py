r"""REOBench-style robustness sweep: EuroSAT-MS kNN probe, clean and 12 corruptions x 5 severities.

  python finetune/main.py --config=configs/finetune/reobench_eurosat_ms.py \
      --config.encoder=WORKDIR --workdir=workdirs/eval/reobench

The classifier is fitted on clean train images; each test image is corrupted at native size in
its physical units (bands mapped to [0, 1] by the train split's per-band min and max), then
normalised and resized as usual. Reports clean OA, every cell, the mean corrupted OA and the
absolute and relative drop, with a robustness-curve plot. Parameters per severity:
eofm/eval/corruptions.py. Other tasks: set `robustness.corruptions` in their configs.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="knn")
    c.data.update(source="eurosat_ms", source_args={"root": "../shared/data/eurosat_ms"}, key="s2")
    c.robustness = eval_config.robustness(("all",))
    return c
