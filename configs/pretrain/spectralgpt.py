r"""SpectralGPT: 3-D spatial-spectral cubes, 90 % masked cube modelling, progressive training.

Stage 1 at 96 px, then stage 2 at 128 px initialised from stage 1 with the spatial position tables
interpolated (the official code re-initialises them):

  python pretrain/main.py --config=configs/pretrain/spectralgpt.py:tiny --workdir=workdirs/sgpt_s1
  python pretrain/main.py --config=configs/pretrain/spectralgpt.py:tiny,stage2 \
      --workdir=workdirs/sgpt_s2 --config.init_from=workdirs/sgpt_s1

Variants (`eofm.models.spectralgpt.VARIANTS`): `tiny` (192 wide, 6 blocks; CPU), `base`
(768/12/12, the released size), `large`, `huge`; add `stage2` for the 128 px stage. Data: the S2 L2A
bands of the embedded BigEarthNet pairs in SpectralGPT's order (B10 is not in L2A), per-image
per-band min-max, random resized crops (scale 0.2-1) and flips; EuroSAT-MS via
--config.data.source=eurosat_ms --config.data.source_args='{"root": "../shared/data/eurosat_ms"}'.
Loss = L1 (masked cubes) + L2 (group sums at every location). Optimiser as published: AdamW (0.9,
0.95), wd 0.05, blr 2e-4 (stage 1) / 1e-4 (stage 2) x batch / 256, warmup then cosine.

Memory and compile time of the larger variants: `--config.model.dtype=bfloat16` (float32
master weights; norms, softmax and the loss stay float32), `--config.model.remat=full` (or
dots) and `--config.model.scan_blocks=True` (each block stack one scanned block).

Expected (tiny, 2 CPU cores, batch 32): about 2.9 s per step (300 steps in about 15 minutes; the
decoder runs on all 576 cubes); the loss starts near 15 (the group sums of untrained predictions)
and falls below 5 within 20 steps.
"""

import ml_collections

from eofm import config_args
from eofm.models import family, spectralgpt
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny", stage2=False)
    c = ml_collections.ConfigDict()
    c.model_name = "spectralgpt"
    c.variant = args.variant
    c.model = family.config_fields(spectralgpt, args.variant)
    c.data = train_config.data(
        normalization="minmax_per_image",
        image_size=128 if args.stage2 else 96,
        crop_scale=(0.2, 1.0),
        sensors=("s2",),
        source_args={"keys": ("s2",)},
        bands={"s2": spectralgpt.BANDS},
    )
    train_config.pretraining(c, base_lr=1e-4 if args.stage2 else 2e-4)
    return c
