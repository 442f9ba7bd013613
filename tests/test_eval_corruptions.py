"""REOBench-style corruptions on a real EuroSAT-MS patch: contract, determinism, strength, masks."""

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eofm.data.datasets import eurosat_ms
from eofm.eval import corruptions as C

EUROSAT = Path(__file__).resolve().parents[1].parent / "shared/data/eurosat_ms"
SEVERITY_LEVELS = range(1, 6)
N_KEYS = 3  # Keys averaged for the strength check; one more key checks that draws differ.
RANDOM = set(C.CORRUPTIONS) - {"gaussian_blur", "compression"}


@pytest.fixture(scope="module")
def images():
    """The 64x64x13 patch in [0, 1] and a 45x37 RGB crop of it (sizes not multiples of 8)."""
    s2 = np.clip(np.asarray(eurosat_ms(EUROSAT)[0]["s2"], np.float32) / 10000, 0, 1)
    assert s2.shape == (64, 64, 13)
    return {"ms": s2, "rgb": np.ascontiguousarray(s2[5:50, 3:40, [3, 2, 1]])}


@pytest.fixture(scope="module")
def keys():
    return jax.random.split(jax.random.key(0), N_KEYS + 1)


def _all_severities(name, image, keys):
    """[5, K, H, W, C]: every severity, one example per key, in one compiled call."""
    stack = jnp.broadcast_to(image, (len(keys), *image.shape))
    run = jax.jit(lambda x, k: jnp.stack([C.batched(name, x, s, k) for s in SEVERITY_LEVELS]))
    return np.asarray(run(stack, keys))


def _psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - b) ** 2, axis=(-3, -2, -1))
    return 10 * np.log10(1 / np.maximum(mse, 1e-12))


def test_table():
    assert len(C.CORRUPTIONS) == 12 and set(C.GEOMETRIC) <= set(C.CORRUPTIONS)
    assert all(len(values) == 5 for values in C.SEVERITIES.values())
    assert set(C.REOBENCH_NAMES) == set(C.CORRUPTIONS)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_contract_determinism_and_strength(name, images, keys):
    for kind, image in images.items():
        out = _all_severities(name, image, keys)
        assert out.shape == (5, N_KEYS + 1, *image.shape) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, kind
        # A separately compiled single-image call reproduces the batched one for the same key.
        single = jax.jit(C.corrupt, static_argnums=(0, 2))(name, image, 3, keys[1])
        np.testing.assert_allclose(single, out[2, 1], atol=1e-5, err_msg=kind)
        differs = not np.allclose(out[:, 0], out[:, N_KEYS])
        assert differs == (name in RANDOM), kind
        psnr = _psnr(out[:, :N_KEYS], image).mean(axis=1)
        steps = np.diff(psnr)
        if name in C.GEOMETRIC:
            assert (steps <= 0.5).all() and psnr[-1] < psnr[0] - 3, (kind, psnr)
        else:
            assert (steps < 0).all(), (kind, psnr)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_eager_matches_jit(name, images, keys):
    image = images["rgb"]
    eager = C.corrupt(name, image, 2, keys[0])
    jitted = jax.jit(C.corrupt, static_argnums=(0, 2))(name, image, 2, keys[0])
    np.testing.assert_allclose(eager, jitted, atol=1e-5)


def _coordinate_image(h, w):
    """Image whose bands encode (row, column) in [0, 1], and masks with the same coordinates."""
    y, x = np.mgrid[:h, :w]
    image = np.stack([y / (h - 1), x / (w - 1), np.full((h, w), 0.5)], -1).astype(np.float32)
    masks = {"index": (y * w + x).astype(np.int32), "yx": np.stack([y, x], -1).astype(np.int16)}
    return image, masks


@pytest.mark.parametrize("name", C.GEOMETRIC)
@pytest.mark.parametrize("severity", [2, 5])
def test_masks_follow_image(name, severity):
    h, w = 40, 52
    image, masks = _coordinate_image(h, w)
    run = jax.jit(C.corrupt_with_masks, static_argnums=(0, 3), static_argnames="fill_label")
    for seed in range(3):
        key = jax.random.key(seed)
        out, moved = run(name, image, masks, severity, key)
        assert moved["index"].shape == (h, w) and moved["index"].dtype == np.int32
        assert moved["yx"].shape == (h, w, 2) and moved["yx"].dtype == np.int16
        np.testing.assert_allclose(out, C.corrupt(name, image, severity, key), atol=1e-6)
        img_yx = np.stack([out[..., 0] * (h - 1), out[..., 1] * (w - 1)], -1)
        mask_yx = np.stack(np.divmod(np.asarray(moved["index"]), w), -1)
        np.testing.assert_array_equal(mask_yx, moved["yx"])
        err = np.abs(img_yx - mask_yx)
        # Nearest is within half a pixel of bilinear, except beside the reflection folds.
        assert err.max() <= 1.0 and np.mean(err <= 0.501) > 0.9, (seed, err.max())
        assert (mask_yx != np.stack(np.mgrid[:h, :w], -1)).any()

        # With a fill label, pixels from outside the grid are marked and the rest are unchanged.
        _, filled = run(name, image, masks, severity, key, fill_label=-1)
        filled = {k: np.asarray(v) for k, v in filled.items()}
        outside = filled["index"] == -1
        np.testing.assert_array_equal(filled["yx"] == -1, np.stack([outside] * 2, -1))
        np.testing.assert_array_equal(filled["index"][~outside], moved["index"][~outside])
        if name == "rotate" and severity == 5:
            assert outside[0, 0] and outside[-1, -1] and not outside[h // 2, w // 2]


@pytest.mark.parametrize("name", sorted(set(C.CORRUPTIONS) - set(C.GEOMETRIC)))
def test_photometric_masks_unchanged(name, images):
    mask = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    image, moved = C.corrupt_with_masks(name, images["ms"], {"m": mask}, 4, jax.random.key(3))
    assert image.shape == images["ms"].shape
    np.testing.assert_array_equal(moved["m"], mask)


def test_value_range_and_dtypes(images):
    ms, key = images["ms"], jax.random.key(7)
    ref = C.corrupt("clouds", ms, 3, key)
    dn = C.corrupt("clouds", ms * 10000, 3, key, value_range=(0, 10000))
    np.testing.assert_allclose(dn, np.asarray(ref) * 10000, atol=0.05)
    as_uint16 = C.corrupt("haze", (ms * 10000).astype(np.uint16), 2, key, value_range=(0, 10000))
    assert as_uint16.dtype == np.uint16 and as_uint16.max() <= 10000
    as_bf16 = C.corrupt("gaussian_noise", ms.astype(jnp.bfloat16), 2, key)
    assert as_bf16.dtype == jnp.bfloat16 and as_bf16.shape == ms.shape


def test_gap_fill_and_nesting(images):
    ms, key = images["ms"], jax.random.key(11)
    filled = [
        np.asarray(C.corrupt("gaps", ms * 10000, s, key, value_range=(0, 10000), gap_fill=-9999))
        == -9999
        for s in SEVERITY_LEVELS
    ]
    for weaker, stronger in itertools.pairwise(filled):
        assert (stronger | ~weaker).all() and stronger.sum() > weaker.sum()
    assert (filled[-1] == filled[-1][..., :1]).all()  # Every band is missing at the same pixels.


def test_batched_keys_and_errors(images):
    stack = np.stack([images["rgb"]] * 4)
    key = jax.random.key(5)
    np.testing.assert_array_equal(
        C.batched("motion_blur", stack, 2, key),
        C.batched("motion_blur", stack, 2, jax.random.split(key, 4)),
    )
    raw = C.batched("gaussian_noise", stack, 1, jax.random.PRNGKey(5))
    assert raw.shape == stack.shape and not np.allclose(raw[0], raw[1])
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt("snow", images["rgb"], 1, key)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt("haze", images["rgb"], 6, key)


def test_corrupt_scaled_keeps_each_band_in_its_own_range():
    rng = np.random.default_rng(0)
    lo, hi = np.array([0.0, -30.0], np.float32), np.array([10000.0, 5.0], np.float32)
    images = (lo + (hi - lo) * rng.uniform(size=(2, 24, 24, 2))).astype(np.float32)
    images[0, 0, 0, 0] = np.nan
    keys = jax.random.split(jax.random.key(0), 2)
    valid = np.isfinite(images)
    out, moved = C.corrupt_scaled(
        "gaussian_noise", images, 3, keys, lo, hi, {"valid": valid}, fill_label=0
    )
    out = np.asarray(out)
    assert out.shape == images.shape and np.isfinite(out).all()
    for b in range(2):
        assert lo[b] <= out[..., b].min() and out[..., b].max() <= hi[b]
    # Noise sigma is 0.06 of each band's own range.
    noise = (out - np.nan_to_num(images, nan=0.0))[1]
    ratio = noise.std(axis=(0, 1)) / (hi - lo)
    np.testing.assert_allclose(ratio, 0.06, rtol=0.25)
    np.testing.assert_array_equal(moved["valid"], valid)  # photometric: masks untouched
    again, _ = C.corrupt_scaled(
        "gaussian_noise", images, 3, keys, lo, hi, {"valid": valid}, fill_label=0
    )
    np.testing.assert_array_equal(out, np.asarray(again))
    _, moved = C.corrupt_scaled(
        "translate", images, 5, keys, lo, hi, {"valid": valid}, fill_label=0
    )
    assert not np.array_equal(np.asarray(moved["valid"]), valid)
