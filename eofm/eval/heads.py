"""Task heads on encoder features: classification, UPerNet and linear segmentation, Siamese fusion.

Dense heads take the encoder's feature levels, grids [B, h_i, w_i, D_i] of stride s_i = S / h_i
(pixels per cell of an S px image) and width D_i, described by `level_shapes` [(s_i, D_i), ...]
(`Encoder.shapes`), and return per-pixel logits [B, H, W, K] at the requested output size. A plain
ViT gives several levels of one stride and width, a hierarchical encoder (Swin) strides 4, 8, 16,
32. Normalisation layers are GroupNorm rather than UPerNet's BatchNorm: statistics do not depend
on the batch, so a head behaves the same in training and in (sliding-window) inference.
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


RESAMPLING = (4.0, 2.0, 1.0, 0.5)  # level stride / pyramid stride that the pyramid supports


def resampling_factors(strides: Sequence[int]) -> tuple[float, ...]:
    """s_i / t_i of each level: the pyramid's strides double from level to level, t_i = s_r *
    2 ** (i - r) with r = max(N - 2, 0), so four levels of one stride s become s/4, s/2, s, 2s
    and levels whose strides already double keep them. A factor other than 4, 2, 1 or 1/2 is a
    ValueError naming the level."""
    r = max(len(strides) - 2, 0)
    factors = []
    for i, stride in enumerate(strides):
        target = strides[r] * 2.0 ** (i - r)
        factor = stride / target
        if factor not in RESAMPLING:
            raise ValueError(
                f"feature level {i} (stride {stride}) would need resampling by {factor:g} to"
                f" stride {target:g} of the pyramid; the head resamples by 4, 2, 1 or 1/2"
                f" (level strides {list(strides)})"
            )
        factors.append(factor)
    return tuple(factors)


class Feature2Pyramid(nnx.Module):
    """N feature levels -> a pyramid of doubling strides (see `resampling_factors`): level i is
    resampled by s_i / t_i: x4 = two 2x2 transposed convs with GroupNorm + GELU between, x2 = one
    transposed conv, x1 = identity, x1/2 = 2x2 max pooling. For four ViT grids these are the
    strides x4, x2, x1, x0.5 of the patch grid (the ViT adapter of UPerNet); a Swin's levels pass
    as they are. At most one level may need each learned upsampling (x4, x2).

    levels [B, h_i, w_i, D_i] -> f32[B, h_i * f_i, w_i * f_i, D_i].
    """

    def __init__(self, level_shapes: Sequence[tuple[int, int]], *, rngs: nnx.Rngs):
        strides = [stride for stride, _ in level_shapes]
        self.factors = resampling_factors(strides)
        width, level = {}, {}
        for i, (factor, (_, dim)) in enumerate(zip(self.factors, level_shapes)):
            if factor > 1 and factor in level:
                raise ValueError(
                    f"feature levels {level[factor]} and {i} both need x{factor:g} upsampling;"
                    f" the pyramid has one of each (level strides {strides})"
                )
            width[factor], level[factor] = dim, i

        def up(factor):
            return nnx.ConvTranspose(
                width[factor], width[factor], (2, 2), strides=(2, 2), rngs=rngs
            )

        # Created in this order (the ViT adapter's), so one seed gives the same initial values.
        if 4 in width:
            self.up4a, self.up4b = up(4), up(4)
        if 2 in width:
            self.up2 = up(2)
        if 4 in width:
            self.norm4 = nnx.GroupNorm(width[4], num_groups=_groups(width[4]), rngs=rngs)

    def _resample(self, x: jax.Array, factor: float) -> jax.Array:
        if factor == 4:
            return self.up4b(jax.nn.gelu(self.norm4(self.up4a(x))))
        if factor == 2:
            return self.up2(x)
        if factor == 0.5:
            return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return x

    def __call__(self, levels: Sequence[jax.Array]) -> list[jax.Array]:
        if len(levels) != len(self.factors):
            raise ValueError(f"the pyramid takes {len(self.factors)} levels, got {len(levels)}")
        return [self._resample(x.astype(jnp.float32), f) for x, f in zip(levels, self.factors)]


class UPerNet(nnx.Module):
    """UPerNet decoder (Xiao et al. 2018): `Feature2Pyramid`, a pyramid pooling module on the
    coarsest level, laterals and a top-down FPN on the others, fusion of all levels at the finest
    one, 1x1 classifier.

    levels: N >= 1 grids [B, h_i, w_i, D_i] of `level_shapes` -> logits f32[B, H, W, K]
    (bilinear to `out_hw`).
    """

    def __init__(
        self,
        level_shapes: Sequence[tuple[int, int]],
        num_classes: int,
        *,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        rngs: nnx.Rngs,
    ):
        *finer, coarsest = [dim for _, dim in level_shapes]
        self.pyramid = Feature2Pyramid(level_shapes, rngs=rngs)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nnx.List([ConvNormAct(coarsest, channels, 1, rngs=rngs) for _ in pool_scales])
        self.bottleneck = ConvNormAct(
            coarsest + len(pool_scales) * channels, channels, 3, rngs=rngs
        )
        self.lateral = nnx.List([ConvNormAct(dim, channels, 1, rngs=rngs) for dim in finer])
        self.fpn = nnx.List([ConvNormAct(channels, channels, 3, rngs=rngs) for _ in finer])
        self.fuse = ConvNormAct((len(finer) + 1) * channels, channels, 3, rngs=rngs)
        self.classifier = nnx.Conv(channels, num_classes, (1, 1), rngs=rngs)

    def _ppm(self, x: jax.Array) -> jax.Array:
        hw = x.shape[1:3]
        pooled = [
            resize(conv(adaptive_avg_pool(x, s)), hw) for s, conv in zip(self.pool_scales, self.ppm)
        ]
        return self.bottleneck(jnp.concatenate([x, *pooled], axis=-1))

    def __call__(self, levels: Sequence[jax.Array], out_hw: tuple[int, int]) -> jax.Array:
        *finer, coarsest = self.pyramid(levels)
        laterals = [conv(x) for conv, x in zip(self.lateral, finer)] + [self._ppm(coarsest)]
        for i in range(len(finer), 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals)] + [laterals[-1]]
        finest = outs[0].shape[1:3]
        fused = self.fuse(jnp.concatenate([resize(x, finest) for x in outs], axis=-1))
        return resize(self.classifier(fused), out_hw)


class LinearSegHead(nnx.Module):
    """Linear segmentation probe: the levels resized (bilinear) to the finest one and concatenated
    along channels, LayerNorm, one 1x1 linear layer, bilinear upsampling.

    levels: grids [B, h_i, w_i, D_i] of `level_shapes` -> logits f32[B, H, W, K] (at `out_hw`).
    """

    def __init__(
        self, level_shapes: Sequence[tuple[int, int]], num_classes: int, *, rngs: nnx.Rngs
    ):
        dim = sum(width for _, width in level_shapes)
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.linear = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, levels: Sequence[jax.Array], out_hw: tuple[int, int]) -> jax.Array:
        finest = max((x.shape[1:3] for x in levels), key=lambda hw: hw[0] * hw[1])
        x = jnp.concatenate([resize(x.astype(jnp.float32), finest) for x in levels], axis=-1)
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
    kind: str,
    level_shapes: Sequence[tuple[int, int]],
    num_classes: int,
    *,
    channels: int,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """`upernet` or `linear` head on feature levels of `level_shapes` [(stride, width), ...]."""
    if not level_shapes:
        raise ValueError("a dense head needs at least one feature level")
    if kind == "upernet":
        return UPerNet(level_shapes, num_classes, channels=channels, rngs=rngs)
    if kind == "linear":
        return LinearSegHead(level_shapes, num_classes, rngs=rngs)
    raise ValueError(f"unknown dense head {kind!r}; expected 'upernet' or 'linear'")
