r"""Scene classification on EuroSAT-MS (13 Sentinel-2 L1C bands, 10 classes): kNN, linear probe or
full finetuning, optionally with the REOBench-style corruption sweep.

  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=knn \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=workdirs/eval/eurosat_knn
  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=linear ...
  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=finetune ...
  python finetune/main.py --config=configs/finetune/eurosat_ms.py:method=knn,robustness=all ...

Stratified 2/3 - 1/3 split of the 216 labelled files (seeded, 73 test images); per-band statistics
from the train part; images normalised with the encoder's pretraining method (override with
data.normalization) and resized to its native size.
- `knn`: pooled features, k = 20 cosine kNN with votes weighted by exp(s / 0.07) (the SMARTIES
  protocol).
- `linear`: L2-regularised logistic regression (L-BFGS) on standardised features, the weight decay
  chosen on a quarter of the train split (log grid 1e-6 .. 10), then refitted on all of it.
- `finetune`: a LayerNorm + linear head on the pooled features with the encoder trained too, block
  i's lr scaled by llrd ** (depth + 1 - i) (llrd 0.75), AdamW lr 1e-3 (head), 10 % warmup, cosine
  decay, batch 16, 200 steps, random 90-degree rotations and flips, checkpoints in WORKDIR/fit
  (`--config.fit.finetune=False` trains the head alone on the frozen encoder).
- `robustness=all`: the classifier is fitted on clean train images; each test image is corrupted at
  native size in its physical units (bands mapped to [0, 1] by the train split's per-band min and
  max), then normalised and resized as usual: clean OA, 12 corruptions x 5 severities, the mean
  corrupted OA and the drop, with a robustness-curve plot (eofm/eval/corruptions.py).
Reports OA and balanced accuracy (95 % bootstrap interval of the OA) in WORKDIR/report.{json,md}
with a confusion matrix plot, beside two baselines on the same split: the majority class and the
`linear` probe on per-band image statistics (eofm/eval/baselines.py); the report flags an encoder
below either. `--config.encoder=baseline:image_stats` evaluates those statistics themselves.

Other data: `--config.data.source_args.root=DIR` (a folder with labels.csv: path, class_name,
class_index, split); `--config.data.train_root=DIR --config.data.test_root=DIR2` train on one
folder and test on another (optionally `data.train_splits` / `data.test_split` of each).

Expected with a random SMARTIES tiny (`random:configs/pretrain/smarties.py:tiny`), 2 CPU cores:
knn OA 0.47 (interval 0.36-0.58, 17 s), linear 0.70 (20 s), finetune 0.70 (about 60 s),
knn,robustness=all clean 0.47 -> mean corrupted 0.40 (about 110 s); the baselines add some seconds
(the probe compiles once per data shape): majority OA 0.11, image-statistics probe OA 0.82
(interval 0.73-0.92), which a random encoder does not reach. A pretrained encoder should beat
these floors.
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, method="knn", robustness="none")
    c = eval_config.classification(method=args.method)
    c.data.update(source="eurosat_ms", source_args={"root": "../shared/data/eurosat_ms"}, key="s2")
    c.fit.finetune = args.method == "finetune"
    if args.robustness != "none":
        c.robustness = eval_config.robustness(tuple(args.robustness.split("+")))
    return c
