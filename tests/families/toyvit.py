"""A toy model family, kept outside eofm: a small ViT autoencoder under a new name.

Everything the family protocol (`eofm.models.family`) asks for, in one module, built from eofm's
shared layers: the ViT encoder sees every patch and a linear head reconstructs each patch's pixels.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from eofm.models import layers
from eofm.models.vit import ViTConfig, ViTEncoder, ViTFeatures, vit_forward_flops


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ViTConfig):
    pass


VARIANTS = {"tiny": dict(patch_size=8, embed_dim=32, depth=4, num_heads=2)}
DATA_FIELDS = ("in_chans",)


def from_data(inputs, image_size):
    del image_size
    if len(inputs) != 1:
        raise ValueError(f"toyvit reads one sensor, got {list(inputs)}")
    return {"in_chans": len(next(iter(inputs.values())).bands)}


class Model(ViTFeatures, nnx.Module):
    feature_definition: str = (
        "`pooled`: the CLS token after the final LayerNorm. `levels`: the patch tokens of the"
        " tapped blocks on the 8-pixel patch grid; the last block's tap includes the final"
        " LayerNorm, earlier taps are the raw residual stream."
    )

    def __init__(self, cfg: Config, inputs, *, rngs: nnx.Rngs):
        self.cfg, self.inputs = cfg, dict(inputs)
        self.bands = next(iter(self.inputs.values())).bands
        self.encoder = ViTEncoder(cfg, rngs=rngs)
        patch_dim = cfg.patch_size**2 * cfg.in_chans
        self.head = layers.linear(cfg.embed_dim, patch_dim, ("embed", "patch"), rngs=rngs)

    def loss(self, batch, rng):
        del rng
        (images,) = (batch[k] for k in self.inputs)
        pred = self.head(self.encoder(images)[:, 1:])
        loss = jnp.mean(jnp.square(pred - layers.patchify(images, self.cfg.patch_size)))
        return loss, {}

    def flops_per_example(self, image_size):
        num_patches = (image_size // self.cfg.patch_size) ** 2
        return 3 * vit_forward_flops(self.cfg, 1 + num_patches)

    def missing_bands(self, spec):
        missing = tuple(b for b in self.bands if b not in spec.bands)
        if len(missing) == len(self.bands):
            raise ValueError(f"toyvit reads {self.bands}; the data have none")
        return missing

    def features(self, images, spec, taps=None):
        index = [spec.bands.index(b) if b in spec.bands else 0 for b in self.bands]
        present = jnp.asarray([b in spec.bands for b in self.bands], images.dtype)
        tokens = self.encoder.embed_patches(images[..., index] * present)
        return self.vit_features(tokens, images.shape[1:3], taps)
