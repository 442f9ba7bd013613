r"""Plain ViT masked autoencoder (He et al. 2022): the baseline every family extends.

  python pretrain/main.py --config=configs/pretrain/mae.py:tiny --workdir=workdirs/mae_tiny \
      --config.total_steps=300

Variants (`eofm.models.mae.VARIANTS`): `tiny` (ViT 192 wide, 6 blocks, 96 px), `base` (ViT-B/16,
224 px) and `large` (ViT-L/16, 224 px) with the MAE paper's 512-wide, 8-block decoder. Default
data: the BigEarthNet v2 S1+S2 pairs embedded in eofm (12 S2 L2A bands z-scored + VV/VH
z-scored, stacked into 14 channels).

`get_sweep()` crosses two learning rates with two mask ratios:
`python scripts/sweep.py --config=configs/pretrain/mae.py:tiny --workdir=sweeps/mae_tiny`.

Memory and compile time of the larger variants: `--config.model.dtype=bfloat16` (float32
master weights; norms, softmax and the loss stay float32), `--config.model.remat=full` (or
dots) and `--config.model.scan_blocks=True` (each block stack one scanned block).

Expected (tiny, 2 CPU cores, batch 32): about 0.4 s per step (300 steps in about 2.5 minutes,
MFU about 0.4 of the measured matmul peak); the loss (norm-pix MSE on masked patches) starts near
1.07 and falls below 1.0 within 40 steps.
"""

import ml_collections

from eofm import config_args
from eofm.models import family, mae
from eofm.sweeps import spec as sweeps
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    c = ml_collections.ConfigDict()
    c.model_name = "mae"
    c.variant = args.variant
    c.model = family.config_fields(mae, args.variant)
    c.data = train_config.data(
        normalization="zscore",
        image_size=96 if args.variant == "tiny" else 224,
        crop_scale=(0.5, 1.0),
    )
    train_config.pretraining(c, base_lr=1.5e-4)
    return c


def get_sweep() -> list[dict]:
    """Learning rate x mask ratio (scripts/sweep.py runs one pretraining per point)."""
    return sweeps.product(
        sweeps.sweep("config.lr", [7.5e-5, 3e-4]),
        sweeps.sweep("config.model.mask_ratio", [0.5, 0.75]),
    )
