"""Task heads on encoder features: classification, UPerNet and linear segmentation, Siamese fusion.

Dense heads take a list of feature grids [B, h, w, D] (the tapped encoder blocks, all on the patch
grid) and return per-pixel logits [B, H, W, K] at the requested output size. Normalisation layers
are GroupNorm rather than UPerNet's BatchNorm: statistics do not depend on the batch, so a head
behaves the same in training and in (sliding-window) inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


def resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Bilinear resize of [B, h, w, C] to [B, *hw, C] (identity when the size already matches)."""
    if x.shape[1:3] == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear")


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """Average pooling of [B, h, w, C] into size x size bins (bin i spans floor(i h / s) to
    ceil((i + 1) h / s), so bins overlap when h is not a multiple of s)."""
    h, w = x.shape[1:3]

    def bins(n):
        return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

    rows = [
        jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins(w)], axis=1)
        for r0, r1 in bins(h)
    ]
    return jnp.stack(rows, axis=1)


class ConvNormAct(nnx.Module):
    """Conv (no bias) -> GroupNorm -> ReLU.  [B, h, w, C_in] -> [B, h, w, C_out]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            c_in, c_out, (kernel, kernel), padding="SAME", use_bias=False, rngs=rngs
        )
        self.norm = nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class ClassifierHead(nnx.Module):
    """LayerNorm + linear on pooled features.  [B, D] -> logits [B, K]."""

    def __init__(self, dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.linear = nnx.Linear(
            dim, num_classes, kernel_init=nnx.initializers.normal(0.01), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(self.norm(x.astype(jnp.float32)))


class Feature2Pyramid(nnx.Module):
    """Four same-scale ViT grids -> strides x4, x2, x1, x0.5 of the patch grid (the ViT adapter of
    UPerNet): two 2x2 transposed convs with GroupNorm + GELU between, one transposed conv,
    identity, 2x2 max pooling."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        def up():
            return nnx.ConvTranspose(dim, dim, (2, 2), strides=(2, 2), rngs=rngs)

        self.up4a, self.up4b, self.up2 = up(), up(), up()
        self.norm4 = nnx.GroupNorm(dim, num_groups=_groups(dim), rngs=rngs)

    def __call__(self, levels: Sequence[jax.Array]) -> list[jax.Array]:
        if len(levels) != 4:
            raise ValueError(f"Feature2Pyramid takes 4 feature grids, got {len(levels)}")
        a, b, c, d = (x.astype(jnp.float32) for x in levels)
        a = self.up4b(jax.nn.gelu(self.norm4(self.up4a(a))))
        d = nnx.max_pool(d, (2, 2), strides=(2, 2), padding="SAME")
        return [a, self.up2(b), c, d]


class UPerNet(nnx.Module):
    """UPerNet decoder (Xiao et al. 2018) on a ViT: Feature2Pyramid, a pyramid pooling module on
    the coarsest level, a top-down FPN, fusion of all levels at the finest one, 1x1 classifier.

    levels: 4 grids [B, h, w, in_dim] -> logits f32[B, H, W, K] (bilinear to `out_hw`).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        rngs: nnx.Rngs,
    ):
        self.pyramid = Feature2Pyramid(in_dim, rngs=rngs)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nnx.List([ConvNormAct(in_dim, channels, 1, rngs=rngs) for _ in pool_scales])
        self.bottleneck = ConvNormAct(in_dim + len(pool_scales) * channels, channels, 3, rngs=rngs)
        self.lateral = nnx.List([ConvNormAct(in_dim, channels, 1, rngs=rngs) for _ in range(3)])
        self.fpn = nnx.List([ConvNormAct(channels, channels, 3, rngs=rngs) for _ in range(3)])
        self.fuse = ConvNormAct(4 * channels, channels, 3, rngs=rngs)
        self.classifier = nnx.Conv(channels, num_classes, (1, 1), rngs=rngs)

    def _ppm(self, x: jax.Array) -> jax.Array:
        hw = x.shape[1:3]
        pooled = [
            resize(conv(adaptive_avg_pool(x, s)), hw) for s, conv in zip(self.pool_scales, self.ppm)
        ]
        return self.bottleneck(jnp.concatenate([x, *pooled], axis=-1))

    def __call__(self, levels: Sequence[jax.Array], out_hw: tuple[int, int]) -> jax.Array:
        feats = self.pyramid(levels)
        laterals = [conv(x) for conv, x in zip(self.lateral, feats[:3])] + [self._ppm(feats[3])]
        for i in range(3, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:3])] + [laterals[3]]
        finest = outs[0].shape[1:3]
        fused = self.fuse(jnp.concatenate([resize(x, finest) for x in outs], axis=-1))
        return resize(self.classifier(fused), out_hw)


class LinearSegHead(nnx.Module):
    """Linear segmentation probe: the grids concatenated along channels, LayerNorm, one 1x1
    linear layer, bilinear upsampling.  levels [B, h, w, in_dim] each -> f32[B, H, W, K]."""

    def __init__(self, in_dim: int, num_levels: int, num_classes: int, *, rngs: nnx.Rngs):
        dim = in_dim * num_levels
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.linear = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, levels: Sequence[jax.Array], out_hw: tuple[int, int]) -> jax.Array:
        x = jnp.concatenate([x.astype(jnp.float32) for x in levels], axis=-1)
        return resize(self.linear(self.norm(x)), out_hw)


FUSIONS = ("diff", "concat")


def fuse_siamese(before: Sequence[jax.Array], after: Sequence[jax.Array], fusion: str) -> list:
    """Per-level fusion of the two dates' grids: `diff` = after - before (D channels) or `concat`
    = [before, after] (2 D channels)."""
    if fusion == "diff":
        return [b - a for a, b in zip(before, after)]
    if fusion == "concat":
        return [jnp.concatenate([a, b], axis=-1) for a, b in zip(before, after)]
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def dense_head(
    kind: str, in_dim: int, num_levels: int, num_classes: int, *, channels: int, rngs: nnx.Rngs
) -> nnx.Module:
    """`upernet` (4 levels) or `linear` head for `num_levels` grids of width `in_dim`."""
    if kind == "upernet":
        if num_levels != 4:
            raise ValueError(f"the UPerNet head takes 4 encoder levels, got {num_levels}")
        return UPerNet(in_dim, num_classes, channels=channels, rngs=rngs)
    if kind == "linear":
        return LinearSegHead(in_dim, num_levels, num_classes, rngs=rngs)
    raise ValueError(f"unknown dense head {kind!r}; expected 'upernet' or 'linear'")
