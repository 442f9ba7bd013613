r"""Plain ViT masked autoencoder (He et al. 2022): the baseline every family extends.

  python pretrain/main.py --config=configs/pretrain/mae.py:tiny --workdir=workdirs/mae_tiny \
      --config.total_steps=300

Variants: `tiny` (ViT 192 wide, 6 blocks, 96 px: a CPU step takes well under a second), `base`
(ViT-B/16, 224 px) and `large` (ViT-L/16, 224 px) with the MAE paper's 512-wide, 8-block decoder.
Default data: the BigEarthNet v2 S1+S2 pairs embedded in eofm (12 S2 L2A bands z-scored + VV/VH
z-scored, stacked into 14 channels). On 2 CPU cores, `tiny` for 300 steps takes a few minutes and
its loss (norm-pix MSE on masked patches) falls from about 1.0.
"""

import ml_collections

from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "mae"
    c.variant = arg
    c.model, size = train_config.mae_vit(arg)
    # 12 S2 L2A bands and VV/VH, stacked into 14 channels.
    c.data = train_config.data(normalization="zscore", image_size=size, crop_scale=(0.5, 1.0))
    train_config.training(c, base_lr=1.5e-4)
    return c
