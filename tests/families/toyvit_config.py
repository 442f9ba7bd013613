"""Pretraining config of the toy ViT family (tests/families/toyvit.py) on the embedded
BigEarthNet S2 images: python pretrain/main.py --config=tests/families/toyvit_config.py ..."""

import ml_collections

from eofm import config_args
from eofm.models import family
from eofm.train import config as train_config
from families import toyvit


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    c = ml_collections.ConfigDict()
    c.model_name = "families.toyvit"
    c.variant = args.variant
    c.model = family.config_fields(toyvit, args.variant)
    c.data = train_config.data(
        normalization="zscore",
        image_size=32,
        crop_scale=(0.5, 1.0),
        sensors=("s2",),
        source_args={"keys": ("s2",)},
    )
    train_config.pretraining(c, base_lr=1e-3, batch_size=8)
    c.total_steps, c.warmup_steps, c.log_every = 6, 1, 1
    c.data.num_workers = 0  # decode in-process: worker start-up outweighs 6 steps
    return c
