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
from ml_collections.config_dict import placeholder

VARIANTS = {
    # name: (embed_dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, image_size)
    "tiny": (192, 6, 3, 128, 2, 4, 96),
    "base": (768, 12, 12, 512, 8, 16, 224),
    "large": (1024, 24, 16, 512, 8, 16, 224),
}


def _int():
    return placeholder(int)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; expected one of {sorted(VARIANTS)}")
    dim, depth, heads, dec_dim, dec_depth, dec_heads, size = VARIANTS[arg]
    c = ml_collections.ConfigDict()
    c.model_name = "mae"
    c.variant = arg
    c.model = ml_collections.ConfigDict(
        dict(
            patch_size=16,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            decoder_dim=dec_dim,
            decoder_depth=dec_depth,
            decoder_heads=dec_heads,
            mask_ratio=0.75,
            norm_pix_loss=True,
            dtype="float32",
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            source="bigearthnet_s1s2",  # eofm.data.datasets.make_source name
            source_args={},  # keyword arguments of the source
            sensors=("s2", "s1"),  # sensors stacked (channels) into the model input
            normalization="zscore",  # eofm.data.normalize method, statistics from prepare
            prepared_dir="",  # ArrayRecord cache; "" = WORKDIR/data
            image_size=size,
            crop_scale=(0.5, 1.0),
            num_workers=0,
        )
    )

    c.seed = 0
    c.batch_size = 32
    c.total_steps = 300
    c.warmup_steps = 20
    c.lr = 1.5e-4 * c.batch_size / 256 * 4  # MAE's base lr scaling, x4 for short runs
    c.weight_decay = 0.05
    c.b1, c.b2 = 0.9, 0.95
    c.grad_clip_norm = 0.0
    c.grad_accum_steps = 1
    c.peak_flops = 0.0  # 0: measure a large float32 matmul at start

    # Mesh: a preset (dp, fsdp, fsdp_tp) and optional explicit axis sizes (-1 = the rest).
    c.mesh = ml_collections.ConfigDict(dict(preset="dp", data=_int(), fsdp=_int(), tensor=_int()))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3, keep_period=0))
    c.log_every = 10
    return c
