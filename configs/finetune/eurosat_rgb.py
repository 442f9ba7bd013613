r"""Scene classification on EuroSAT RGB (1,000 JPEGs, 100 per class): the 3-band case.

  python finetune/main.py --config=configs/finetune/eurosat_rgb.py:method=knn \
      --config.encoder=random:configs/pretrain/smarties.py:tiny --workdir=workdirs/eval/rgb_knn

SMARTIES projects the red, green and blue bands to its spectral ranges; encoders that need other
bands (SpectralGPT, CROMA) stop with an error naming them, and the MAE baseline zero-fills them
(listed in the report). `method=linear` or `method=finetune` switch the classifier (see
eurosat_ms.py). Seeded stratified split with 30 % (300 images) in test.

Expected with a random SMARTIES tiny, 2 CPU cores: knn OA 0.53 (interval 0.48-0.58, about 17 s,
plus some seconds for the baselines); baselines on the same split: majority OA 0.10, the linear
probe on per-band image statistics OA 0.66 (interval 0.61-0.72).
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, method="knn")
    c = eval_config.classification(method=args.method)
    c.data.update(
        source="eurosat_rgb", source_args={"root": "../shared/data/eurosat_rgb"}, key="rgb"
    )
    c.fit.finetune = args.method == "finetune"
    c.test_fraction = 0.3
    return c
