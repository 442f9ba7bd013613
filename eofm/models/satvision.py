"""SatVision-TOA (Spradlin et al. 2024): a SwinV2 encoder pretrained with SimMIM on the 14 MODIS
top-of-atmosphere bands.

Shapes: B batch, S image side in pixels, K = 14 input slots (the MODIS bands of `SLOTS`), p patch
side (4 px), u mask unit side (8 px), U = (S/u)^2 mask units, r = p * 2^(stages - 1) the encoder's
output stride (32 px), D = C * 2^(stages - 1) its output width.

SimMIM: exactly ceil(mask_ratio * U) mask units per image are drawn uniformly; the patch tokens
under them (after the patch embedding's LayerNorm) are replaced by a learned mask token; the
encoder runs on every token; a 1x1 convolution D -> r^2 K and a pixel shuffle predict every pixel;
the loss is L1 on the masked pixels.

Inputs: the model always reads K slots. Images of any sensor are mapped onto them by wavelength
(`family.wavelength_indices`: MODIS bands by their own ranges, Landsat red onto MODIS band 1, ...);
a slot no band covers is absent: 0 in the input (the scaled value 0) and never a loss target, like
an invalid pixel (`<key>_valid` False). The loss is the official one when every pixel is valid.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eofm.data.spec import SensorSpec, valid_key
from eofm.models import family, layers
from eofm.models.swin import SwinConfig, SwinEncoder, swin_forward_flops

# The 14 MODIS Level-1B bands SatVision-TOA reads, in its channel order (6 reflective, 8 emissive).
SLOTS = SensorSpec.full("modis_toa")
LOSS_EPS = 1e-5  # added to the masked-pixel count of the loss, as the official code does


@dataclasses.dataclass(frozen=True, kw_only=True)
class SatVisionConfig(SwinConfig):
    """SatVision-TOA hyper-parameters: the SwinV2 encoder's (`SwinConfig`) plus SimMIM's.

    Attributes:
      mask_unit: u, side of a mask unit in pixels (a multiple of the patch size).
      mask_ratio: fraction of the mask units masked per image (rounded up).
    """

    mask_unit: int = 8
    mask_ratio: float = 0.6

    def __post_init__(self):
        super().__post_init__()
        if self.mask_unit % self.patch_size:
            raise ValueError(
                f"SatVisionConfig: mask_unit {self.mask_unit} is not a multiple of the patch size"
                f" {self.patch_size}"
            )

    @property
    def encoder(self) -> SwinConfig:
        return SwinConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SwinConfig)})

    @property
    def encoder_stride(self) -> int:
        """r: pixels per token of the last stage."""
        return self.stage_strides[-1]

    def num_masked(self, num_units: int) -> int:
        """ceil(mask_ratio * U), in exact decimal arithmetic (0.6 * 10 is 6, not 7)."""
        return math.ceil(fractions.Fraction(str(self.mask_ratio)) * num_units)


Config = SatVisionConfig
# As released (patch 4, window 8, MLP ratio 4, extra LN every 6 blocks, drop path 0.1), and a CPU
# `tiny` that keeps the four stages and the extra LN.
VARIANTS = {
    "tiny": dict(
        embed_dim=32,
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 8, 16),
        extra_norm_period=6,
    ),
    "huge": dict(
        embed_dim=352,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        extra_norm_period=6,
        drop_path_rate=0.1,
    ),
    "giant": dict(
        embed_dim=512,
        depths=(2, 2, 42, 2),
        num_heads=(16, 32, 64, 128),
        extra_norm_period=6,
        drop_path_rate=0.1,
    ),
}
DATA_FIELDS = ("in_chans",)


def _slot_index(spec: SensorSpec, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(gather index, presence) of the K slots in images of `spec`; an error when none is
    covered."""
    index = family.wavelength_indices(spec, SLOTS)
    if all(i is None for i in index):
        raise ValueError(
            f"{who} reads MODIS bands {', '.join(SLOTS.bands)}; none is covered by a band of"
            f" {spec.sensor} data {spec.bands} (same modality, overlapping wavelengths)"
        )
    present = np.array([i is not None for i in index], np.float32)
    return np.array([i or 0 for i in index]), present


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """One sensor whose bands cover at least one MODIS slot; images a multiple of the encoder
    stride (32 px for four stages)."""
    if len(inputs) != 1:
        raise ValueError(f"SatVision-TOA reads one sensor, not {sorted(inputs)}")
    (spec,) = inputs.values()
    _slot_index(spec, "SatVision-TOA")
    del image_size  # checked by the model on each call (any multiple of the stride works)
    return {"in_chans": len(SLOTS.bands)}


def random_unit_mask(rng: jax.Array, batch: int, units_hw: tuple[int, int], num_masked: int):
    """Exactly `num_masked` of the mask units of each image, drawn uniformly.  -> f32 [B, uh, uw],
    1 = masked."""
    num_units = units_hw[0] * units_hw[1]
    noise = jax.random.uniform(rng, (batch, num_units))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return (rank < num_masked).astype(jnp.float32).reshape(batch, *units_hw)


def upsample_mask(mask: jax.Array, factor: int) -> jax.Array:
    """Nearest upsampling of a mask [B, h, w] -> [B, h * factor, w * factor]."""
    return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """torch.nn.PixelShuffle in channels-last layout.  [B, h, w, K r^2] -> [B, h r, w r, K].

    Output pixel (i, j) of a cell, channel c, reads input channel c * r^2 + i * r + j.
    """
    b, h, w, ch = x.shape
    k = ch // (factor * factor)
    x = x.reshape(b, h, w, k, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * factor, w * factor, k)


def masked_l1(
    images: jax.Array, pred: jax.Array, pixel_mask: jax.Array, valid: jax.Array
) -> jax.Array:
    """SimMIM's L1 over masked, valid values.

    sum |x - x^| M V / (sum M V / K + 1e-5) / K, with M the pixel mask [B, S, S], V the validity
    [B, S, S, K] (absent slots and invalid pixels 0) and K the slot count. With every value valid
    this is the official sum |x - x^| M / (sum_pix M + 1e-5) / K.  -> f32[].
    """
    k = images.shape[-1]
    weight = pixel_mask[..., None] * valid
    error = jnp.abs(images.astype(jnp.float32) - pred.astype(jnp.float32))
    return jnp.sum(error * weight) / (jnp.sum(weight) / k + LOSS_EPS) / k


class SatVision(nnx.Module):
    """SwinV2 encoder + SimMIM head on K MODIS slots (see the module doc)."""

    feature_definition: str = (
        "`pooled`: the mean over the last stage's tokens after the final LayerNorm. `levels`: the"
        " output of each of the four stages (strides 4, 8, 16 and 32 px; widths C, 2C, 4C, 8C),"
        " after its blocks and before its patch merging; the last one after the final LayerNorm."
    )
    ENCODING_PARAMS = ("encoder/",)

    def __init__(self, cfg: SatVisionConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        if cfg.in_chans != len(SLOTS.bands):
            raise ValueError(
                f"SatVision-TOA has {len(SLOTS.bands)} input slots, not {cfg.in_chans}"
            )
        from_data(inputs, 0)
        self.cfg = cfg
        self.inputs = dict(inputs)
        (self.key,) = self.inputs
        self.bands = SLOTS.bands
        self.encoder = SwinEncoder(cfg.encoder, rngs=rngs)
        token_init = layers.logical(nnx.initializers.normal(0.02), ("embed",))
        self.mask_token = nnx.Param(token_init(rngs.params(), (cfg.embed_dim,), cfg.param_dtype))
        r = cfg.encoder_stride
        self.decoder = layers.linear(
            cfg.stage_dims[-1],
            r * r * cfg.in_chans,
            ("embed", "patch"),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )

    # ---- SimMIM ------------------------------------------------------------------------------

    def _check_size(self, image_hw: tuple[int, int]) -> None:
        side = math.lcm(self.cfg.encoder_stride, self.cfg.mask_unit)
        if image_hw[0] % side or image_hw[1] % side:
            raise ValueError(
                f"SatVision-TOA needs images whose sides are multiples of {side} px (its output"
                f" stride {self.cfg.encoder_stride} px and mask unit {self.cfg.mask_unit} px),"
                f" got {image_hw}"
            )

    def predict(self, images: jax.Array, unit_mask: jax.Array, rng: jax.Array | None = None):
        """Pixels predicted from the images with the masked units hidden.

        Args:
          images: f32[B, S, S, K] in slot layout (`slots`).
          unit_mask: f32[B, S/u, S/u], 1 = masked.
          rng: stochastic-depth key; None: none.
        Returns:
          f32[B, S, S, K].
        """
        self._check_size(images.shape[1:3])
        tokens = self.encoder.embed(images)
        token_mask = upsample_mask(unit_mask, self.cfg.mask_unit // self.cfg.patch_size)
        token_mask = token_mask[..., None].astype(tokens.dtype)
        token = self.mask_token[...].astype(tokens.dtype)
        tokens = tokens * (1 - token_mask) + token * token_mask
        latent = self.encoder.encode(tokens, rng)[-1]
        return pixel_shuffle(self.decoder(latent).astype(jnp.float32), self.cfg.encoder_stride)

    def __call__(self, images: jax.Array, valid: jax.Array | None = None, *, rng: jax.Array):
        """SimMIM loss on images in slot layout.

        Args:
          images: f32[B, S, S, K].
          valid: f32 or bool [B, S, S, K], 0 for absent slots and invalid pixels; None: all valid.
          rng: PRNG key for the masks and stochastic depth.
        Returns:
          loss: f32[] (`masked_l1`).
          aux: {"pred": f32[B, S, S, K], "mask": f32[B, S, S] (1 = masked pixel)}.
        """
        b, s, _, _ = images.shape
        mask_rng, drop_rng = jax.random.split(rng)
        u = self.cfg.mask_unit
        units = (s // u, images.shape[2] // u)
        unit_mask = random_unit_mask(mask_rng, b, units, self.cfg.num_masked(units[0] * units[1]))
        pred = self.predict(images, unit_mask, drop_rng if self.cfg.drop_path_rate else None)
        pixel_mask = upsample_mask(unit_mask, u)
        valid = jnp.ones_like(images) if valid is None else valid.astype(jnp.float32)
        return masked_l1(images, pred, pixel_mask, valid), {"pred": pred, "mask": pixel_mask}

    # ---- the family protocol (eofm.models.family) --------------------------------------------

    def slots(
        self, images: jax.Array, spec: SensorSpec, valid: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Images of `spec` [B, S, S, C] (and their validity) on the K slots.
        -> (f32[B, S, S, K], f32[B, S, S, K] validity, 0 for absent slots)."""
        gather, present = _slot_index(spec, "SatVision-TOA")
        x = images[..., gather] * present
        v = jnp.ones(x.shape, jnp.float32) if valid is None else valid[..., gather]
        return x, v.astype(jnp.float32) * present

    def stack(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """The batch's images on the K slots.  -> f32[B, S, S, K]."""
        return self.slots(batch[self.key], self.inputs[self.key])[0]

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        images, valid = self.slots(
            batch[self.key], self.inputs[self.key], batch.get(valid_key(self.key))
        )
        loss, aux = self(images, valid, rng=rng)
        masked = aux["mask"][..., None] * valid
        return loss, {
            "masked_valid_fraction": jnp.sum(masked) / jnp.sum(aux["mask"]) / valid.shape[-1]
        }

    def flops_per_example(self, image_size: int) -> float:
        """Forward + backward (3x the forward) matmul FLOPs: the encoder on every token
        (`swin_forward_flops`) and the 1x1 decoder 2 (S/r)^2 D r^2 K."""
        r, cfg = self.cfg.encoder_stride, self.cfg
        decoder = 2.0 * (image_size // r) ** 2 * cfg.stage_dims[-1] * r * r * cfg.in_chans
        return 3.0 * (swin_forward_flops(cfg.encoder, (image_size, image_size)) + decoder)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        _, present = _slot_index(spec, "SatVision-TOA")
        return tuple(b for b, p in zip(self.bands, present) if not p)

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        if taps:
            raise ValueError(
                f"taps {tuple(taps)}: SatVision-TOA's levels are its four stage outputs; taps"
                " pick blocks of plain transformer stacks only"
            )
        self._check_size(images.shape[1:3])
        levels = self.encoder(self.slots(images, spec)[0])
        return {"pooled": jnp.mean(levels[-1], axis=(1, 2)), "levels": levels}

    @property
    def num_layers(self) -> int:
        return sum(self.cfg.depths) + 1

    def layer_of(self, path: str) -> int:
        """Patch embedding and mask token 0; block b of stage s sum(depths[:s]) + b + 1; the
        patch merging after stage s with that stage's last block; the rest (final LN, decoder)
        sum(depths) + 1."""
        depths = self.cfg.depths
        if re.match(r"^(encoder/patch_embed|encoder/patch_norm|mask_token)(/|$)", path):
            return 0
        if m := re.match(r"^encoder/stages/(\d+)/blocks/(\d+)/", path):
            return sum(depths[: int(m.group(1))]) + int(m.group(2)) + 1
        if m := re.match(r"^encoder/stages/(\d+)/downsample/", path):
            return sum(depths[: int(m.group(1)) + 1])
        return sum(depths) + 1

    def reconstruct(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Predicted images for visualisation.

        Args:
          images: f32[B, S, S, K] in slot layout (`stack`).
          rng: PRNG key for the masks.
        Returns:
          reconstruction f32[B, S, S, K] and mask f32[B, S, S] (1 on masked pixels).
        """
        b, s, w, _ = images.shape
        u = self.cfg.mask_unit
        units = (s // u, w // u)
        unit_mask = random_unit_mask(rng, b, units, self.cfg.num_masked(units[0] * units[1]))
        return self.predict(images, unit_mask), upsample_mask(unit_mask, u)


Model = SatVision
