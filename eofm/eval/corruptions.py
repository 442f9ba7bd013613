"""REOBench-style image corruptions at five severities, for images with any number of bands.

The corruptions are the twelve REOBench ones (Li et al., arXiv 2505.16793). REOBench ships only
pre-rendered images, not the generator or its parameters, so the values below are this project's own
(versioned by `SPEC_VERSION`). Results computed with them are "REOBench-style", not
REOBench-equal. Severity 1 is the mildest and severity 5 the strongest:

| name                | parameter (unit)                       | severity 1 .. 5               |
|---------------------|----------------------------------------|-------------------------------|
| gaussian_noise      | sigma (fraction of the value range)    | .02 .04 .06 .08 .10           |
| salt_and_pepper     | fraction of pixels set to 0 or 1       | .01 .02 .03 .05 .07           |
| gaussian_blur       | sigma (px)                             | .5 1 1.5 2 3                  |
| motion_blur         | line length at a random angle (px)     | 5 9 13 17 21                  |
| brightness_contrast | shift of random sign (range fraction)  | .05 .10 .15 .20 .25           |
|                     | and contrast factor about band means   | .9 .8 .7 .6 .5                |
| clouds              | coverage (fraction of pixels)          | .1 .2 .3 .4 .5                |
|                     | and peak opacity                       | .5 .625 .75 .875 1            |
| haze                | optical depth beta, t = exp(-beta)     | .1 .2 .35 .5 .7               |
| gaps                | number of parallel stripes             | 2 4 6 8 10                    |
|                     | and stripe width (px)                  | 1 2 4 6 8                     |
| compression         | JPEG quality, 8x8 DCT per band         | 80 60 40 25 10                |
| rotate              | angle of random sign (degrees)         | 5 10 15 30 45                 |
| scale               | zoom-out factor, or                    | .9 .8 .75 .7 .6               |
|                     | zoom-in factor (one drawn at random)   | 1.1 1.2 1.3 1.4 1.5           |
| translate           | shift in a random direction (fraction  | .02 .05 .10 .15 .20           |
|                     | of H and of W)                         |                               |

Here is how each corruption treats the bands:
- Every band gets the same operation. Noise is drawn independently per band. Salt and pepper,
  clouds and gaps hit the same pixels in every band.
- Clouds and haze are spectrally flat: clouds are white (top of the range) in every band, and haze
  has one airlight A ~ U(0.8, 1.0) and one depth for all bands.
- Brightness_contrast scales each band about its own mean and then shifts it.
- Compression treats each band as a JPEG luminance plane (IJG quality scaling of the Annex K table),
  with no chroma subsampling and no 8-bit rounding.
- Geometric corruptions resample bilinearly about the image centre and use half-sample symmetric
  (reflect) padding. `corrupt_with_masks` moves label masks the same way with nearest-neighbour
  sampling.

Input contract: images are [H, W, C] floats in [0, 1]. Normalise first, or pass the range in image
units with `value_range=(lo, hi)`. Outputs are clipped to that range and keep their shape and dtype;
integer dtypes are rounded. The severity is a static Python int. For a fixed rng the output is
deterministic, and a draw is shared across severities, so stronger severities extend weaker ones.
One key per example, e.g. `jax.random.fold_in(key, sample_index)`, makes a corrupted test set
reproducible.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SPEC_VERSION = 1

SEVERITIES: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.02, 0.04, 0.06, 0.08, 0.10),
    "salt_and_pepper": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.5, 1.0, 1.5, 2.0, 3.0),
    "motion_blur": (5, 9, 13, 17, 21),
    "brightness_contrast": ((0.05, 0.9), (0.10, 0.8), (0.15, 0.7), (0.20, 0.6), (0.25, 0.5)),
    "clouds": ((0.1, 0.5), (0.2, 0.625), (0.3, 0.75), (0.4, 0.875), (0.5, 1.0)),
    "haze": (0.1, 0.2, 0.35, 0.5, 0.7),
    "gaps": ((2, 1), (4, 2), (6, 4), (8, 6), (10, 8)),
    "compression": (80, 60, 40, 25, 10),
    "rotate": (5.0, 10.0, 15.0, 30.0, 45.0),
    "scale": ((0.9, 1.1), (0.8, 1.2), (0.75, 1.3), (0.7, 1.4), (0.6, 1.5)),
    "translate": (0.02, 0.05, 0.10, 0.15, 0.20),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITIES)
GEOMETRIC: tuple[str, ...] = ("rotate", "scale", "translate")
# Folder names of the pre-rendered REOBench sets (detection / segmentation).
REOBENCH_NAMES: dict[str, str] = {
    **{name: name for name in CORRUPTIONS},
    "salt_and_pepper": "salt_and_pepper_noise",
    "compression": "compression_artifacts",
}

_HIGHEST = jax.lax.Precision.HIGHEST
_CLOUD_EDGE = 0.75  # Width of the cloud-edge opacity ramp, in standard deviations of the noise.
_MAX_GAPS = max(n for n, _ in SEVERITIES["gaps"])
# JPEG luminance quantisation table (ITU-T T.81, Annex K.1), for quality 50.
_JPEG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float64,
)


# ---------------------------------------------------------------------------------------------
# Photometric corruptions: x [H, W, C] float32 in [0, 1] -> unclipped [H, W, C].


def _filter(x: jax.Array, kernel: jax.Array | np.ndarray) -> jax.Array:
    """Correlates every band of x [H, W, C] with an odd-sized kernel [kh, kw], reflect padding."""
    kh, kw = kernel.shape
    xp = jnp.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="symmetric")
    lhs = jnp.moveaxis(xp, -1, 0)[:, None]  # [C, 1, H + kh - 1, W + kw - 1]
    rhs = jnp.asarray(kernel, x.dtype)[None, None]
    out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", precision=_HIGHEST)
    return jnp.moveaxis(out[:, 0], 0, -1)


def _gaussian_noise(x: jax.Array, sigma: float, key: jax.Array) -> jax.Array:
    return x + sigma * jax.random.normal(key, x.shape, x.dtype)


def _salt_and_pepper(x: jax.Array, fraction: float, key: jax.Array) -> jax.Array:
    hit, salt = jax.random.uniform(key, (2, *x.shape[:2], 1))
    return jnp.where(hit < fraction, (salt < 0.5).astype(x.dtype), x)


def _gaussian_blur(x: jax.Array, sigma: float, key: jax.Array) -> jax.Array:
    del key
    t = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1)
    taps = np.exp(-0.5 * (t / sigma) ** 2)
    taps /= taps.sum()
    return _filter(_filter(x, taps[:, None]), taps[None, :])


def _motion_blur(x: jax.Array, length: int, key: jax.Array) -> jax.Array:
    angle = jax.random.uniform(key, (), minval=0.0, maxval=jnp.pi)
    half = (length - 1) / 2
    v, u = np.mgrid[:length, :length] - half  # Row (down) and column offsets, in px.
    along = u * jnp.cos(angle) + v * jnp.sin(angle)
    across = v * jnp.cos(angle) - u * jnp.sin(angle)
    kernel = jnp.clip(1 - jnp.abs(across), 0, 1) * jnp.clip(half + 0.5 - jnp.abs(along), 0, 1)
    return _filter(x, kernel / kernel.sum())


def _brightness_contrast(x: jax.Array, param: tuple[float, float], key: jax.Array) -> jax.Array:
    shift, factor = param
    sign = jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * factor + mean + sign * shift


def _cubic_upsampler(n_out: int, cell: float) -> np.ndarray:
    """[n_out, n_in] Keys-cubic (a = -0.5) interpolation from a grid of `cell`-px cells, with a
    margin so that every output pixel has its four neighbours."""
    n_in = math.ceil(n_out / cell) + 4
    t = (np.arange(n_out) + 0.5) / cell + 1.0
    d = np.abs(t[:, None] - np.arange(n_in)[None, :])
    near = 1.5 * d**3 - 2.5 * d**2 + 1
    far = -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0)).astype(np.float32)


def _fractal_noise(key: jax.Array, h: int, w: int) -> jax.Array:
    """Sum of bicubic value-noise octaves, zero mean and unit std, [H, W]. Coarsest cell: half the
    shorter side; each octave halves the cell (down to 2 px) and the amplitude."""
    size = min(h, w)
    octaves = max(1, int(math.log2(size / 2)))
    upsamplers = []
    for octave in range(octaves):
        cell = size / 2 ** (octave + 1)
        upsamplers.append((_cubic_upsampler(h, cell), _cubic_upsampler(w, cell)))
    sizes = [up_y.shape[1] * up_x.shape[1] for up_y, up_x in upsamplers]
    draws = jnp.split(jax.random.normal(key, (sum(sizes),)), np.cumsum(sizes)[:-1])
    noise = jnp.zeros((h, w), jnp.float32)
    for octave, ((up_y, up_x), draw) in enumerate(zip(upsamplers, draws)):
        grid = draw.reshape(up_y.shape[1], up_x.shape[1])
        up = jnp.einsum("yi,ij,xj->yx", up_y, grid, up_x, precision=_HIGHEST)
        noise = noise + 0.5**octave * up
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _clouds(x: jax.Array, param: tuple[float, float], key: jax.Array) -> jax.Array:
    coverage, peak = param
    noise = _fractal_noise(key, *x.shape[:2])
    threshold = jnp.quantile(noise, 1.0 - coverage)
    alpha = peak * jnp.clip((noise - threshold) / _CLOUD_EDGE, 0.0, 1.0)[..., None]
    return x * (1 - alpha) + alpha


def _haze(x: jax.Array, beta: float, key: jax.Array) -> jax.Array:
    airlight = jax.random.uniform(key, (), minval=0.8, maxval=1.0)
    transmission = math.exp(-beta)
    return x * transmission + airlight * (1 - transmission)


def _gap_mask(h: int, w: int, param: tuple[int, int], key: jax.Array) -> jax.Array:
    """[H, W] bool: `count` parallel stripes `width` px wide at one random angle."""
    count, width = param
    draws = jax.random.uniform(key, (1 + _MAX_GAPS,))
    angle = jnp.pi * draws[0]
    y, x = np.mgrid[:h, :w] - np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    across = x * cos + y * sin  # Signed distance along the stripes' normal, px.
    extent = 0.5 * (w * jnp.abs(cos) + h * jnp.abs(sin))
    offsets = (2 * draws[1:] - 1) * extent
    return (jnp.abs(across[..., None] - offsets[:count]) < width / 2).any(-1)


def _jpeg_steps(quality: int) -> np.ndarray:
    """[8, 8] quantisation steps in units of the [0, 1] range (IJG quality scaling)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255) / 255.0


def _dct_matrix(n: int = 8) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n]: coefficients = D @ signal."""
    k, i = np.mgrid[:n, :n]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    d[0] /= np.sqrt(2)
    return d


def _compression(x: jax.Array, quality: int, key: jax.Array) -> jax.Array:
    del key
    h, w, c = x.shape
    xp = jnp.pad(x - 0.5, ((0, -h % 8), (0, -w % 8), (0, 0)), mode="edge")
    blocks = xp.reshape(xp.shape[0] // 8, 8, xp.shape[1] // 8, 8, c)
    d = jnp.asarray(_dct_matrix(), x.dtype)
    steps = jnp.asarray(_jpeg_steps(quality), x.dtype)[None, :, None, :, None]
    coef = jnp.einsum("ui,aibjc,vj->aubvc", d, blocks, d, precision=_HIGHEST)
    coef = jnp.round(coef / steps) * steps
    rec = jnp.einsum("ui,aubvc,vj->aibjc", d, coef, d, precision=_HIGHEST)
    return rec.reshape(xp.shape)[:h, :w] + 0.5


_PHOTOMETRIC: dict[str, Callable[[jax.Array, Any, jax.Array], jax.Array]] = {
    "gaussian_noise": _gaussian_noise,
    "salt_and_pepper": _salt_and_pepper,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "brightness_contrast": _brightness_contrast,
    "clouds": _clouds,
    "haze": _haze,
    "gaps": lambda x, param, key: x,  # The stripes are written after clipping (see `corrupt`).
    "compression": _compression,
}

# ---------------------------------------------------------------------------------------------
# Geometric corruptions: output pixel grid -> source coordinates (src_y, src_x), each [H, W] px.


def _centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y, x = np.mgrid[:h, :w].astype(np.float32)
    return y - cy, x - cx, cy, cx


def _rotate_coords(h: int, w: int, degrees: float, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    theta = jnp.where(jax.random.bernoulli(key), 1.0, -1.0) * math.radians(degrees)
    y, x, cy, cx = _centred_grid(h, w)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return cy - sin * x + cos * y, cx + cos * x + sin * y


def _scale_coords(
    h: int, w: int, param: tuple[float, float], key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    zoom = jnp.where(jax.random.bernoulli(key), param[1], param[0])
    y, x, cy, cx = _centred_grid(h, w)
    return cy + y / zoom, cx + x / zoom


def _translate_coords(
    h: int, w: int, fraction: float, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    direction = jax.random.uniform(key, (), minval=0.0, maxval=2 * jnp.pi)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    return y - fraction * h * jnp.sin(direction), x - fraction * w * jnp.cos(direction)


_COORDS: dict[str, Callable[[int, int, Any, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "rotate": _rotate_coords,
    "scale": _scale_coords,
    "translate": _translate_coords,
}


def _reflect(index: jax.Array, n: int) -> jax.Array:
    """Integer indices folded into [0, n) by half-sample symmetric reflection."""
    m = jnp.mod(index, 2 * n)
    return jnp.where(m >= n, 2 * n - 1 - m, m)


def _bilinear(x: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
    """Samples x [H, W, C] at (src_y, src_x) [H', W'] bilinearly, with reflect padding."""
    h, w = x.shape[:2]
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    ya, yb = _reflect(y0, h), _reflect(y0 + 1, h)
    xa, xb = _reflect(x0, w), _reflect(x0 + 1, w)
    top = x[ya, xa] * (1 - wx) + x[ya, xb] * wx
    bottom = x[yb, xa] * (1 - wx) + x[yb, xb] * wx
    return top * (1 - wy) + bottom * wy


def _nearest(mask: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
    """Samples mask [H, W] or [H, W, K] at (src_y, src_x) [H', W'] by nearest neighbour."""
    h, w = mask.shape[:2]
    yi = _reflect(jnp.floor(src_y + 0.5).astype(jnp.int32), h)
    xi = _reflect(jnp.floor(src_x + 0.5).astype(jnp.int32), w)
    return mask[yi, xi]


# ---------------------------------------------------------------------------------------------
# Public API.


def _check(name: str, image: jax.Array, severity: int) -> Any:
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r}; expected one of {CORRUPTIONS}")
    try:
        severity = operator.index(severity)
    except TypeError:
        raise TypeError(f"severity must be a static Python int, got {severity!r}") from None
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    return SEVERITIES[name][severity - 1]


def _corrupt(
    name: str,
    image: jax.Array,
    severity: int,
    rng: jax.Array,
    value_range: tuple[float, float],
    gap_fill: float | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Corrupted image and, for geometric corruptions, the source coordinates it was sampled at."""
    image = jnp.asarray(image)
    param = _check(name, image, severity)
    h, w = image.shape[:2]
    lo, hi = value_range
    x = (image.astype(jnp.float32) - lo) / (hi - lo)
    coords = None
    if name in _COORDS:
        coords = _COORDS[name](h, w, param, rng)
        x = _bilinear(x, *coords)
    else:
        x = _PHOTOMETRIC[name](x, param, rng)
    out = jnp.clip(jnp.clip(x, 0.0, 1.0) * (hi - lo) + lo, lo, hi)
    if name == "gaps":
        fill = lo if gap_fill is None else gap_fill
        out = jnp.where(_gap_mask(h, w, param, rng)[..., None], fill, out)
    if jnp.issubdtype(image.dtype, jnp.integer):
        out = jnp.round(out)
    return out.astype(image.dtype), coords


def corrupt(
    name: str,
    image: jax.Array,
    severity: int,
    rng: jax.Array,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    gap_fill: float | None = None,
) -> jax.Array:
    """Applies corruption `name` at `severity` (static int, 1..5) to one image.

    Args:
      name: one of `CORRUPTIONS`.
      image: [H, W, C], any number of bands, values in `value_range`.
      severity: 1 (mildest) .. 5 (strongest); see `SEVERITIES`.
      rng: a PRNG key; the result is a pure function of it.
      value_range: (lo, hi) of the image, in its own units; the corruption runs on
        (image - lo) / (hi - lo) and the output is clipped to [lo, hi].
      gap_fill: value written in the `gaps` stripes, in image units and not clipped (so a no-data
        value such as NaN or -9999 survives); default `lo`.

    Returns:
      The corrupted image, with the shape and dtype of `image`.
    """
    return _corrupt(name, image, severity, rng, value_range, gap_fill)[0]


def corrupt_with_masks(
    name: str,
    image: jax.Array,
    masks: Mapping[str, jax.Array],
    severity: int,
    rng: jax.Array,
    *,
    fill_label: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    gap_fill: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`corrupt`, with per-pixel masks moved like the image by rotate, scale and translate.

    Args:
      masks: name -> [H, W] or [H, W, K] labels on the image's pixel grid, any dtype. They are
        sampled by nearest neighbour at the image's source coordinates, and photometric
        corruptions return them unchanged.
      fill_label: None reflects masks at the border, as the image is; a value is written (cast to
        each mask's dtype) where the source lies outside the original grid, e.g. an ignore index.
      Other arguments: as in `corrupt`.

    Returns:
      (image, masks), each with its input shape and dtype.
    """
    out, coords = _corrupt(name, image, severity, rng, value_range, gap_fill)
    if coords is None:
        return out, dict(masks)
    h, w = out.shape[:2]
    src_y, src_x = coords
    inside = (src_y >= -0.5) & (src_y < h - 0.5) & (src_x >= -0.5) & (src_x < w - 0.5)
    moved = {}
    for key, mask in masks.items():
        mask = jnp.asarray(mask)
        if mask.shape[:2] != (h, w):
            raise ValueError(f"mask {key!r} has shape {mask.shape}, image grid is {(h, w)}")
        warped = _nearest(mask, src_y, src_x)
        if fill_label is not None:
            keep = inside.reshape(inside.shape + (1,) * (mask.ndim - 2))
            warped = jnp.where(keep, warped, jnp.asarray(fill_label).astype(mask.dtype))
        moved[key] = warped
    return out, moved


def batched(
    name: str,
    images: jax.Array,
    severity: int,
    rng: jax.Array,
    masks: Mapping[str, jax.Array] | None = None,
    *,
    fill_label: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    gap_fill: float | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """`corrupt` (or `corrupt_with_masks` when `masks` is given) vmapped over a batch.

    Args:
      images: [B, H, W, C].
      rng: one key, split into B per-example keys, or a batch of B keys.
      masks: optional name -> [B, H, W] or [B, H, W, K].

    Returns:
      [B, H, W, C] images, or (images, masks) when `masks` is given.
    """
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        keys = rng if rng.ndim == 1 else jax.random.split(rng, images.shape[0])
    else:
        keys = rng if rng.ndim == 2 else jax.random.split(rng, images.shape[0])
    options = {"value_range": value_range, "gap_fill": gap_fill}
    if masks is None:
        return jax.vmap(lambda im, k: corrupt(name, im, severity, k, **options))(images, keys)

    def one(image, image_masks, key):
        return corrupt_with_masks(
            name, image, image_masks, severity, key, fill_label=fill_label, **options
        )

    return jax.vmap(one)(images, dict(masks), keys)


@functools.partial(jax.jit, static_argnames=("name", "severity", "fill_label"))
def corrupt_scaled(
    name: str,
    images: jax.Array,
    severity: int,
    keys: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    masks: Mapping[str, jax.Array],
    *,
    fill_label: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`batched` on images in physical units whose bands have different ranges.

    Each band is mapped to [0, 1] by its own (lo, hi), e.g. the train split's min and max,
    corrupted, and mapped back; values outside (lo, hi) are clipped. Non-finite pixels are set to
    lo first (mark them in a mask: geometric corruptions move masks with the image).

    Args:
      images: f32[B, H, W, C]; keys: B PRNG keys; lo, hi: [C]; masks: name -> [B, H, W, ...].
    Returns:
      (images f32[B, H, W, C], masks moved like the images).
    """
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    span = jnp.where(hi > lo, hi - lo, 1.0)
    x = jnp.where(jnp.isfinite(images), (images - lo) / span, 0.0)
    x, moved = batched(name, x, severity, keys, masks, fill_label=fill_label)
    return x * span + lo, moved


def band_range(
    band_stats: Mapping[str, Mapping[str, float]], bands
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (min, max) f32[C] of `compute_band_stats` output: `corrupt_scaled`'s range."""
    lo = np.asarray([band_stats[b]["min"] for b in bands], np.float32)
    return lo, np.asarray([band_stats[b]["max"] for b in bands], np.float32)
