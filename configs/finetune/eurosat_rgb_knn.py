r"""kNN probe on EuroSAT RGB (1,000 JPEGs, 100 per class): the 3-band case.

  python finetune/main.py --config=configs/finetune/eurosat_rgb_knn.py \
      --config.encoder=random:configs/pretrain/smarties.py:tiny --workdir=workdirs/eval/rgb_knn

SMARTIES projects the red, green and blue bands to its spectral ranges; encoders that need other
bands (SpectralGPT, CROMA) stop with an error naming them, and the MAE baseline zero-fills them.
`--config.method=linear` or `finetune` switch the classifier.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="knn")
    c.data.update(
        source="eurosat_rgb", source_args={"root": "../shared/data/eurosat_rgb"}, key="rgb"
    )
    c.test_fraction = 0.3
    return c
