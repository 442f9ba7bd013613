r"""SatVision-TOA: SwinV2 + SimMIM on MODIS top-of-atmosphere bands.

  python pretrain/main.py --config=configs/pretrain/satvision.py:tiny --workdir=workdirs/satvision
  python scripts/plot_reconstruction.py --config=configs/pretrain/satvision.py:tiny \
      --workdir=workdirs/satvision
  # Your MOD021KM stacks (14 bands named b01 ... b33, reflectance and brightness temperature):
  python pretrain/main.py --config=configs/pretrain/satvision.py:giant,image_size=128 \
      --workdir=workdirs/satvision_giant --config.data.source_args='{"files": "/data/modis_toa",
      "sensor": "modis_toa", "patch_size": 128}' --config.data.bands='{}' --config.mesh.preset=fsdp

Variants (`eofm.models.satvision.VARIANTS`): `tiny` (32 wide, depths 2/2/6/2; CPU), `huge` (352,
2/2/18/2) and `giant` (512, 2/2/42/2) as released: patch 4, window 8, extra LN every 6 blocks,
SimMIM with 60 % of the 8 px units masked. The model reads the 14 MODIS slots of
`satvision.SLOTS`; data with fewer bands train with the others absent (never loss targets).
For the large variants: `--config.model.dtype=bfloat16` (f32 master weights),
`--config.model.remat=full` (or dots) and `--config.model.scan_blocks=True`; see
`scripts/memory_plan.py` and the README for what fits where.

Default data: the MOD09GA surface-reflectance strip in ../shared/data/modis_samples (bands 1, 2,
3, 6 and 7 fill five of the 14 slots; about half of its pixels are fill, which is invalid), cut
into 64 px patches. Scaling: SatVision-TOA's fixed one (reflectance as a fraction, brightness
temperature min-max per band). Optimiser: AdamW (0.9, 0.999), weight decay 0.05 (none on norms,
biases, the position-bias MLP, logit scales and the mask token), base lr 3e-4 x batch / 512 for
the released sizes; `tiny` uses 2e-3 so that its short CPU runs move.

Expected (tiny, 2 CPU cores, batch 8, 64 px): about 0.3 s per step (200 steps in about 1.5
minutes); the loss (L1 on masked valid pixels, scaled units) starts at 0.60, is near 0.11 by step
12 and 0.09 by step 100, and ends near 0.08 at step 200.
"""

import ml_collections

from eofm import config_args
from eofm.models import family, satvision
from eofm.train import config as train_config

MODIS_SAMPLE = "../shared/data/modis_samples/MOD09GA.A2008296.h14v17_sr_b01-b07_crop.tif"


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny", image_size=0)
    tiny = args.variant == "tiny"
    c = ml_collections.ConfigDict()
    c.model_name = "satvision"
    c.variant = args.variant
    c.model = family.config_fields(satvision, args.variant)
    image_size = args.image_size or (64 if tiny else 128)
    c.data = train_config.data(
        source="modis",
        normalization="satvision_toa",
        image_size=image_size,
        crop_scale=(0.67, 1.0),
        sensors=("modis",),
        source_args={"files": MODIS_SAMPLE, "sensor": "modis_land", "patch_size": image_size},
        bands={"modis": ("b01", "b02", "b03", "b06", "b07")},
    )
    batch_size = 8 if tiny else 512
    train_config.pretraining(c, base_lr=0.0, batch_size=batch_size)
    c.lr = 2e-3 if tiny else 3e-4 * batch_size / 512
    c.b2 = 0.999
    return c
