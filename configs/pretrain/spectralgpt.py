r"""SpectralGPT: 3-D spatial-spectral cubes, 90 % masked cube modelling, progressive training.

Stage 1 at 96 px, then stage 2 at 128 px initialised from stage 1 with the spatial position tables
interpolated (the official code re-initialises them):

  python pretrain/main.py --config=configs/pretrain/spectralgpt.py:tiny --workdir=workdirs/sgpt_s1
  python pretrain/main.py --config=configs/pretrain/spectralgpt.py:tiny,stage2 \
      --workdir=workdirs/sgpt_s2 --config.init_from=workdirs/sgpt_s1

Variants: `tiny` (192 wide, 6 blocks; CPU), `base` (768/12/12, the released size), `large`, `huge`;
append `,stage2` for the 128 px stage. Data: the S2 L2A bands of the embedded BigEarthNet pairs in
SpectralGPT's order (B10 is not in L2A), per-image per-band min-max, random resized crops
(scale 0.2-1) and flips; EuroSAT-MS via --config.data.source=eurosat_ms
--config.data.source_args='{"root": "../shared/data/eurosat_ms"}'. Loss = L1 (masked cubes) + L2
(group sums at every location). Optimiser as published: AdamW (0.9, 0.95), wd 0.05, blr 2e-4
(stage 1) / 1e-4 (stage 2) x batch / 256, warmup then cosine.
"""

import ml_collections

from eofm.models import spectralgpt
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    variant, _, stage = arg.partition(",")
    if variant not in spectralgpt.VARIANTS or stage not in ("", "stage1", "stage2"):
        raise ValueError(
            f"unknown variant {arg!r}; expected one of"
            f" {sorted(spectralgpt.VARIANTS)} with optional ',stage2'"
        )
    stage2 = stage == "stage2"
    size = spectralgpt.VARIANTS[variant]
    c = ml_collections.ConfigDict()
    c.model_name = "spectralgpt"
    c.variant = variant
    c.model = ml_collections.ConfigDict(
        dict(
            embed_dim=size["embed_dim"],
            depth=size["depth"],
            num_heads=size["num_heads"],
            decoder_dim=size.get("decoder_dim", 512),
            decoder_depth=size.get("decoder_depth", 4),
            decoder_heads=size.get("decoder_heads", 16),
            mask_ratio=0.9,
            dtype="float32",
        )
    )
    c.data = train_config.data(
        normalization="minmax_per_image",
        image_size=128 if stage2 else 96,
        crop_scale=(0.2, 1.0),
        sensors=("s2",),
        source_args={"keys": ("s2",)},
        bands={"s2": spectralgpt.BANDS},
    )
    train_config.training(c, base_lr=1e-4 if stage2 else 2e-4)
    return c
