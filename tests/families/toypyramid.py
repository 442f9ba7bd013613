"""A toy hierarchical family, kept outside eofm: two stages of different stride and width.

Stage 1 embeds 4 x 4 patches (width 16) and runs one transformer block; a 2 x 2 patch merging
(width 32) and a second block make stage 2 at stride 8. Its feature levels differ in stride and
width, as a Swin's do. Pretraining reconstructs each 8 x 8 patch's pixels from stage 2.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from eofm.models import family, layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    widths: tuple[int, int]
    num_heads: int = 2
    in_chans: int = 3


VARIANTS = {"tiny": dict(widths=(16, 32))}
DATA_FIELDS = ("in_chans",)
STRIDES = (4, 8)
_LAYERS = {"embed/": 0, "stage1/": 1, "merge/": 2, "stage2/": 2}  # LLRD layer of each stage


def from_data(inputs, image_size):
    if len(inputs) != 1 or image_size % STRIDES[-1]:
        raise ValueError(f"toypyramid reads one sensor of a size divisible by 8, got {inputs}")
    return {"in_chans": len(next(iter(inputs.values())).bands)}


def _merge(grid):
    """2 x 2 neighbours concatenated: [B, h, w, D] -> [B, h/2, w/2, 4D]."""
    b, h, w, d = grid.shape
    x = grid.reshape(b, h // 2, 2, w // 2, 2, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * d)


class Model(nnx.Module):
    ENCODING_PARAMS = ("embed/", "stage1/", "merge/", "stage2/", "norm/")
    feature_definition: str = (
        "`pooled`: the mean of stage 2's tokens after its LayerNorm. `levels`: stage 1 (stride 4,"
        " width 16, raw block output) and stage 2 after the LayerNorm (stride 8, width 32)."
    )

    def __init__(self, cfg: Config, inputs, *, rngs: nnx.Rngs):
        self.cfg, self.inputs = cfg, dict(inputs)
        self.trained_spec = next(iter(self.inputs.values()))
        w1, w2 = cfg.widths
        self.embed = layers.PatchEmbed(STRIDES[0], cfg.in_chans, w1, rngs=rngs)
        self.stage1 = layers.Block(w1, cfg.num_heads, rngs=rngs)
        self.merge = layers.linear(4 * w1, w2, (None, "embed"), rngs=rngs)
        self.stage2 = layers.Block(w2, cfg.num_heads, rngs=rngs)
        self.norm = layers.layer_norm(w2, rngs=rngs)
        self.head = layers.linear(w2, STRIDES[1] ** 2 * cfg.in_chans, ("embed", "patch"), rngs=rngs)

    def _levels(self, images):
        b, s = images.shape[0], images.shape[1]
        h1, h2 = s // STRIDES[0], s // STRIDES[1]
        x = self.embed(images) + layers.posemb_sincos_2d(h1, h1, self.cfg.widths[0])
        one = self.stage1(x).reshape(b, h1, h1, -1)
        two = self.norm(self.stage2(self.merge(_merge(one)).reshape(b, h2 * h2, -1)))
        return one, two.reshape(b, h2, h2, -1)

    def loss(self, batch, rng):
        del rng
        (images,) = (batch[k] for k in self.inputs)
        _, two = self._levels(images)
        pred = self.head(two.reshape(two.shape[0], -1, two.shape[-1]))
        return jnp.mean(jnp.square(pred - layers.patchify(images, STRIDES[1]))), {}

    def flops_per_example(self, image_size):
        return 0.0

    def missing_bands(self, spec):
        family.pick_bands(spec, self.trained_spec, "toypyramid")
        return ()

    def features(self, images, spec, taps=None):
        if taps:
            raise ValueError("toypyramid has fixed levels, not taps")
        one, two = self._levels(
            images[..., family.pick_bands(spec, self.trained_spec, "toypyramid")]
        )
        return {"pooled": jnp.mean(two, axis=(1, 2)), "levels": [one, two]}

    num_layers = 3

    def layer_of(self, path):
        return next((n for p, n in _LAYERS.items() if path.startswith(p)), self.num_layers)
