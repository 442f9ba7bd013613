r"""RoMA: autoregressive next-block pretraining of a unidirectional Mamba on RGB images, with
rotation-aware adaptive cropping.

  python pretrain/main.py --config=configs/pretrain/roma.py:tiny --workdir=workdirs/roma_tiny
  python finetune/main.py --config=configs/finetune/eurosat_rgb.py:method=knn \
      --config.encoder=workdirs/roma_tiny --workdir=workdirs/eval/roma_knn
  # Your RGB images (a folder of GeoTIFF / PNG / JPEG files, OpticalRS-4M or MillionAID style):
  python pretrain/main.py --config=configs/pretrain/roma.py:B --workdir=workdirs/roma_b \
      --config.data.source=eurosat_rgb --config.data.source_args='{"root": "/data/rgb"}'

Variants (`eofm.models.roma.VARIANTS`): `tiny` (64 wide, 4 blocks, patch 8, 96 px; CPU) and the
paper's T / S / B / L (192 / 384 / 768 / 1024 wide, 12 / 12 / 12 / 24 blocks, patch 16, 192 px),
all with a 4-block, 512-wide cross-attention decoder (tiny: 64 wide). Every image is a 12 x 12
patch grid, 3 x 3 blocks of 4 x 4 patches; blocks 2..9 are predicted from blocks 1..8.
Host side, each image gets a RandomResizedCrop (scale 0.2-1), flips and 90-degree turns, z-score
normalisation with the dataset's statistics, then a textured window (96 px, else 64, else 32;
6 / 4 / 2 patches) rotated by U(-45, 45) degrees; the encoder adds the angle embedding to that
window's tokens. Optimiser: AdamW (0.9, 0.95), weight decay 0.05 on weight matrices (not on the
learned tokens, the angle embedding or Mamba's A_log, as Mamba intends; the release decays
them), lr 1.5e-4 x batch / 256 with warmup and cosine decay.

Default data: the 1,000 EuroSAT RGB JPEGs in ../shared/data/eurosat_rgb (64 px, upsampled by the
crop to 96 px for `tiny`).
"""

import ml_collections

from eofm import config_args
from eofm.models import family, roma
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    tiny = args.variant == "tiny"
    c = ml_collections.ConfigDict()
    c.model_name = "roma"
    c.variant = args.variant
    c.model = family.config_fields(roma, args.variant)
    fields = roma.VARIANTS[args.variant]
    c.data = train_config.data(
        source="eurosat_rgb",
        source_args={"root": "../shared/data/eurosat_rgb"},
        sensors=("rgb",),
        normalization="zscore",
        image_size=fields["patch_size"] * 12,
        crop_scale=(0.2, 1.0),
    )
    batch_size = 16 if tiny else 256
    train_config.pretraining(c, base_lr=1.5e-4, batch_size=batch_size)
    if tiny:
        c.lr = 2e-3  # short CPU runs need a larger step than the scaling rule gives
    return c
