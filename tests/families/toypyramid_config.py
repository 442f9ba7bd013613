"""Pretraining config of the toy two-stage family (tests/families/toypyramid.py) on the embedded
BigEarthNet S2 images (B02, B03, B04, B08)."""

import ml_collections

from eofm import config_args
from eofm.models import family
from eofm.train import config as train_config
from families import toypyramid


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    c = ml_collections.ConfigDict()
    c.model_name = "families.toypyramid"
    c.variant = args.variant
    c.model = family.config_fields(toypyramid, args.variant)
    c.data = train_config.data(
        normalization="zscore",
        image_size=32,
        crop_scale=(0.5, 1.0),
        sensors=("s2",),
        source_args={"keys": ("s2",)},
        bands={"s2": ("B02", "B03", "B04", "B08")},
    )
    train_config.pretraining(c, base_lr=1e-3, batch_size=8)
    c.total_steps, c.warmup_steps, c.log_every = 6, 1, 1
    c.data.num_workers = 0  # decode in-process: worker start-up outweighs 6 steps
    return c
