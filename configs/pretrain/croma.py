r"""CROMA: radar-optical contrastive + masked autoencoder with 2D-ALiBi / X-ALiBi.

  python pretrain/main.py --config=configs/pretrain/croma.py:tiny --workdir=workdirs/croma
  # SSL4EO-S12 (S2 L1C without B10 + S1), random 120 px crops of the 264 px patches:
  python pretrain/main.py --config=configs/pretrain/croma.py:tiny --workdir=workdirs/croma_ssl4eo \
      --config.data.source=ssl4eo_s12 \
      --config.data.source_args='{"root": "../shared/data/ssl4eo_s12"}' \
      --config.data.sensors='("s2c", "s1")' \
      --config.data.bands='{"s2c": ("B01","B02","B03","B04","B05","B06","B07","B08","B8A","B09","B11","B12")}'

Variants (`eofm.models.croma.VARIANTS`): `tiny` (128 wide, 4 / 2 / 2 blocks; CPU), `base` (768
wide, 16 heads, optical 12 / radar 6 / joint 6) and `large` (1024, 16 heads, 24 / 12 / 12) as
published; patch 8 at 120 px. Default data: the embedded BigEarthNet v2 pairs (S2 L2A 12 bands as
optical, S1 VV/VH as radar), each band clipped to mean +- 2 std and rescaled to [0, 1] with dataset
statistics (the SeCo/SatMAE recipe of CROMA's README, with fixed rather than batch statistics).
Loss = InfoNCE + MAE (1:1). `--config.model.official_joint_bias=True` gives the joint encoder's
radar self-attention the cross-attention bias, as the official pretraining script does.

Memory and compile time of the larger variants: `--config.model.dtype=bfloat16` (float32
master weights; norms, softmax and the loss stay float32), `--config.model.remat=full` (or
dots) and `--config.model.scan_blocks=True` (each block stack one scanned block).

Expected (tiny, 2 CPU cores, batch 32): about 0.9 s per step (300 steps in about 5 minutes); the
loss starts near 7.1 (InfoNCE about ln 32 = 3.5 plus the two reconstruction terms) and moves
slowly on the 24 pairs.
"""

import ml_collections

from eofm import config_args
from eofm.models import croma, family
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    c = ml_collections.ConfigDict()
    c.model_name = "croma"
    c.variant = args.variant
    c.model = family.config_fields(croma, args.variant)
    # data.sensors: (optical, radar); data.bands can drop S2 L1C B10 for SSL4EO-S12.
    c.data = train_config.data(normalization="mean2std_clip", image_size=120, crop_scale=(0.5, 1.0))
    train_config.pretraining(c, base_lr=1e-4)
    return c
