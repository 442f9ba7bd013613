"""Tokenizers beyond the plain patch embedding (`layers.PatchEmbed`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from eofm.models import layers


def band_patches(images: jax.Array, patch_size: int) -> jax.Array:
    """Each band's p x p patch flattened on its own, row-major.  [B, H, W, C] -> [B, L, C, p*p]."""
    b, h, w, c = images.shape
    p = patch_size
    x = layers.patchify(images, p).reshape(b, (h // p) * (w // p), p * p, c)
    return jnp.swapaxes(x, -1, -2)


class SpectralPatchEmbed(nnx.Module):
    """Spectrum-aware patch embedding (SMARTIES): one Linear(p*p -> D) per spectral range.

    Band b with projection weights w_b (a row of `spectral.projection_matrix`; one-hot for bands of
    a known range, a convex blend for unseen sensors, zeros for dropped bands) embeds as
    e_b = sum_r w_br (x_b K_r + c_r), and the token is `max_bands * mean_b e_b` over the bands not
    dropped, so any band subset maps into the same space. [B, H, W, C], [C, R] -> [B, L, D].
    """

    def __init__(
        self,
        patch_size: int,
        num_ranges: int,
        dim: int,
        *,
        max_bands: int = 12,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.patch_size, self.max_bands, self.dtype = patch_size, max_bands, dtype
        pp = patch_size * patch_size
        kernel_init = layers.logical(
            nnx.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,)),
            (None, "patch", "embed"),
        )
        self.kernel = nnx.Param(kernel_init(rngs.params(), (num_ranges, pp, dim), param_dtype))
        self.bias = nnx.Param(
            layers.logical(nnx.initializers.zeros, (None, "embed"))(
                rngs.params(), (num_ranges, dim), param_dtype
            )
        )

    def __call__(self, images: jax.Array, *, weights: np.ndarray | jax.Array) -> jax.Array:
        weights = jnp.asarray(weights, jnp.float32)
        if weights.shape != (images.shape[-1], self.kernel.shape[0]):
            raise ValueError(
                f"projection weights {weights.shape} do not match {images.shape[-1]}"
                f" bands and {self.kernel.shape[0]} spectral ranges"
            )
        num_active = jnp.maximum(jnp.sum(jnp.any(weights > 0, axis=-1)), 1)
        kernel = jnp.einsum("cr,rpd->cpd", weights, self.kernel[...]).astype(self.dtype)
        bias = jnp.einsum("cr,rd->d", weights, self.bias[...])
        x = band_patches(images.astype(self.dtype), self.patch_size)
        tokens = jnp.einsum("blcp,cpd->bld", x, kernel) + bias.astype(self.dtype)
        return tokens * (self.max_bands / num_active).astype(self.dtype)
