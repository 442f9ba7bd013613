"""RoMA's rotation-aware adaptive cropping: LBP texture, window search, rotation and token mask."""

import time

import numpy as np
import pytest
from PIL import Image

from eofm.data import rotation_crop
from eofm.data.rotation_crop import (
    RotateTexturedWindow,
    angle_key,
    find_window,
    lbp_codes,
    rotate_nearest,
    rotated_key,
    texture_scores,
)

PATCH = 16
SIDE = 192
GRID = SIDE // PATCH


def noise_sample(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(SIDE, SIDE, 3)).astype(np.float32)
    # Smooth ramp on the left half, texture on the right: the window lands on the right.
    image[:, : SIDE // 2] = np.linspace(-1, 1, SIDE // 2, dtype=np.float32)[None, :, None]
    valid = np.ones((SIDE, SIDE), bool)
    valid[100:110, 150:170] = False
    return {"rgb": image, "rgb_valid": valid, "label": np.int32(3)}


def pixel_area(token_mask: np.ndarray) -> np.ndarray:
    """bool[SIDE, SIDE]: pixels of the tokens set in f32[GRID * GRID]."""
    grid = token_mask.reshape(GRID, GRID) > 0
    return np.kron(grid, np.ones((PATCH, PATCH), bool))


def window_mask(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((GRID, GRID), np.float32)
    mask[top : top + side, left : left + side] = 1
    return mask.ravel()


# --- LBP and texture scores -------------------------------------------------------------------


def test_lbp_of_constant_image_is_255():
    np.testing.assert_array_equal(lbp_codes(np.full((5, 7), 3.0, np.float32)), 255)


def test_lbp_known_3x3():
    gray = np.array([[5, 1, 7], [2, 5, 9], [0, 6, 3]], np.float32)
    codes = lbp_codes(gray)
    # Centre 5, neighbours clockwise from top-left: 5 1 7 9 3 6 0 2 -> bits 0, 2, 3, 5.
    assert codes[1, 1] == 1 + 4 + 8 + 32
    # Right edge 9: only the replicated right neighbour (itself) is >= 9 -> bit 3.
    assert codes[1, 2] == 8
    assert codes.dtype == np.uint8


def test_texture_score_flat_zero_noise_above_gradient():
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48, 3), np.float32)
    image[32:, 32:] = rng.normal(size=(16, 16, 3))
    image[32:, :16] = np.linspace(0, 1, 16, dtype=np.float32)[None, :, None]
    scores = texture_scores(image, 16)
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    flat, noise, gradient = scores[0, 0], scores[2, 2], scores[2, 0]
    assert flat == 0
    assert noise > 0.9
    assert noise > gradient + 0.3


# --- window search ----------------------------------------------------------------------------


def far_edge_map() -> np.ndarray:
    """Best patch at (0, 0); the last row and column, out of reach of every search from (0, 0),
    lift the image mean, so only windows with enough score near (0, 0) pass the mean test."""
    scores = np.zeros((GRID, GRID), np.float32)
    scores[-1, :] = scores[:, -1] = 0.9
    scores[0, 0] = 1.0
    return scores


def test_find_window_falls_back_to_four_patches():
    scores = far_edge_map()
    scores[0:4, 1:5] = 0.3
    # Image mean (1 + 4.8 + 20.7) / 144 = 0.184. Best 6-window: 5.8 / 36 = 0.161 fails;
    # 4-window at (0, 1): 4.8 / 16 = 0.3 beats (0, 0) (4.6) and passes.
    assert find_window(scores) == (0, 1, 4)


def test_find_window_falls_back_to_two_patches():
    scores = far_edge_map()
    scores[1, 2] = scores[2, 1] = scores[2, 2] = 0.4
    # Image mean 22.9 / 144 = 0.159. 6- and 4-windows hold at most 2.2: 0.061, 0.138 fail;
    # 2-window at (1, 1): 1.2 / 4 = 0.3 beats (0, 0) (1.0) and passes.
    assert find_window(scores) == (1, 1, 2)


def test_find_window_none_when_no_size_passes():
    scores = np.zeros((GRID, GRID), np.float32)
    scores[7:, :] = scores[:, 7:] = 0.3
    scores[-1, :] = scores[:, -1] = 0.95
    scores[0, 0] = 1.0
    # Nothing but the best patch within 7 patches of (0, 0); the mass beyond lifts the image mean
    # to 44.45 / 144 = 0.309, above every window in reach: 2-windows 1 / 4, 4-windows 1 / 16,
    # 6-windows (at most 32 patches of 0.3) 0.267.
    assert find_window(scores) is None


def test_find_window_six_patches_when_mean_passes():
    scores = np.full((GRID, GRID), 0.5, np.float32)
    scores[3:9, 4:10] = 0.8
    scores[5, 6] = 1.0
    assert find_window(scores) == (3, 4, 6)


@pytest.mark.parametrize("sizes", [rotation_crop.DEFAULT_WINDOW_SIZES, ((6, 0),), ((4, 1),)])
def test_find_window_stays_inside_grid_at_corner(sizes):
    scores = np.full((GRID, GRID), 0.5, np.float32)
    scores[-1, -1] = 1.0
    top, left, side = find_window(scores, sizes)
    assert side == sizes[0][0]
    assert (top, left) == (GRID - side, GRID - side)


def test_find_window_rejects_window_larger_than_grid():
    with pytest.raises(ValueError, match=r"side=6.*4x4 patch grid.*side <= 4"):
        find_window(np.zeros((4, 4), np.float32))


# --- rotation ---------------------------------------------------------------------------------


def test_rotate_zero_is_identity():
    x = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(rotate_nearest(x, 0.0), x)


@pytest.mark.parametrize("n", [32, 7])
def test_rotate_90_is_counter_clockwise_rot90(n):
    x = np.arange(n * n * 2, dtype=np.float32).reshape(n, n, 2)
    np.testing.assert_array_equal(rotate_nearest(x, 90.0), np.rot90(x))
    np.testing.assert_array_equal(rotate_nearest(x, -90.0), np.rot90(x, -1))
    # Counter-clockwise with row 0 at the top: the top-right corner moves to the top-left.
    assert rotate_nearest(x, 90.0)[0, 0, 0] == x[0, -1, 0]


def test_rotate_fills_corners_and_keeps_centre():
    x = np.ones((32, 32, 1), np.float32)
    out = rotate_nearest(x, 45.0, fill=-7.0)
    assert out.shape == x.shape
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        assert corner == -7.0
    assert np.all(out[12:20, 12:20] == 1.0)


# --- the transform ----------------------------------------------------------------------------


def run_transform(sample: dict, seed: int = 0, **kwargs) -> dict:
    transform = RotateTexturedWindow("rgb", patch_size=PATCH, **kwargs)
    return transform.random_map(sample, np.random.default_rng(seed))


def test_mask_is_exactly_the_rotated_window():
    sample = noise_sample()
    out = run_transform(sample)
    window = find_window(texture_scores(sample["rgb"], PATCH))
    assert window is not None and window[1] >= GRID // 2 - window[2] // 2
    mask = out[rotated_key("rgb")]
    assert mask.shape == (GRID * GRID,) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, window_mask(*window))
    changed = np.any(out["rgb"] != sample["rgb"], axis=-1)
    assert changed.any()
    assert not np.any(changed & ~pixel_area(mask))


def test_released_token_mask_is_the_diagonal_wherever_the_window_is():
    sample = noise_sample()
    window = find_window(texture_scores(sample["rgb"], PATCH))
    side = window[2]
    out = run_transform(sample, released_token_mask=True)
    mask = out[rotated_key("rgb")].reshape(GRID, GRID)
    np.testing.assert_array_equal(np.nonzero(mask), (np.arange(side), np.arange(side)))
    # The image is rotated where the window is, as without the flag.
    np.testing.assert_array_equal(out["rgb"], run_transform(sample)["rgb"])


def test_target_is_input_with_rotated_window():
    sample = noise_sample()
    out = run_transform(sample)
    top, left, side = find_window(texture_scores(sample["rgb"], PATCH))
    angle = out[angle_key("rgb")]
    assert angle.dtype == np.float32 and 0 < abs(angle) <= 45
    rows = slice(top * PATCH, (top + side) * PATCH)
    cols = slice(left * PATCH, (left + side) * PATCH)
    expected = sample["rgb"].copy()
    expected[rows, cols] = rotate_nearest(sample["rgb"][rows, cols], float(angle), fill=0.0)
    np.testing.assert_array_equal(out["rgb"], expected)
    # The validity mask turns with the image; its fill pixels (dataset mean) are valid.
    expected_valid = sample["rgb_valid"].copy()
    expected_valid[rows, cols] = rotate_nearest(sample["rgb_valid"][rows, cols], float(angle), 1)
    np.testing.assert_array_equal(out["rgb_valid"], expected_valid)
    assert out["rgb_valid"].dtype == bool
    filled = rotate_nearest(np.ones((side * PATCH,) * 2, bool), float(angle), fill=False)
    assert np.all(out["rgb_valid"][rows, cols][~filled])
    assert out["label"] == 3


def test_transform_does_not_mutate_input():
    sample = noise_sample()
    before = {k: np.copy(v) for k, v in sample.items()}
    run_transform(sample)
    for k, v in before.items():
        np.testing.assert_array_equal(sample[k], v)


def test_transform_is_deterministic_given_rng():
    first, second = run_transform(noise_sample(), seed=5), run_transform(noise_sample(), seed=5)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    other = run_transform(noise_sample(), seed=6)
    assert other[angle_key("rgb")] != first[angle_key("rgb")]


def test_no_window_leaves_image_and_marks_nothing(monkeypatch):
    monkeypatch.setattr(rotation_crop, "find_window", lambda scores, sizes: None)
    sample = noise_sample()
    out = run_transform(sample)
    np.testing.assert_array_equal(out["rgb"], sample["rgb"])
    np.testing.assert_array_equal(out[rotated_key("rgb")], np.zeros(GRID * GRID, np.float32))
    assert out[angle_key("rgb")] == 0


@pytest.mark.parametrize(
    "image, kwargs, error, match",
    [
        (np.zeros((200, 200, 3)), {}, ValueError, "side 200 is not a multiple of patch_size=16"),
        (np.zeros((192, 176, 3)), {}, ValueError, r"square \[S, S, C\].*\(192, 176, 3\)"),
        (np.zeros((64, 64, 3)), {}, ValueError, r"side=6.*4x4 patch grid"),
        (None, {}, KeyError, r"'rgb' not in sample \['other'\]"),
    ],
)
def test_transform_errors_name_the_culprit(image, kwargs, error, match):
    sample = {"other": np.zeros(3)} if image is None else {"rgb": image.astype(np.float32)}
    with pytest.raises(error, match=match):
        run_transform(sample, **kwargs)


def test_real_aerial_image_finds_window_fast(shared_data):
    path = shared_data / "aerial_rgb_samples" / "rsvqa_hr_usgs" / "1560.png"
    rgb = Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    image = np.asarray(rgb, np.float32)
    image = (image - image.mean((0, 1))) / image.std((0, 1))
    transform = RotateTexturedWindow("rgb", patch_size=PATCH)
    rng = np.random.default_rng(0)
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        out = transform.random_map({"rgb": image}, rng)
        durations.append(time.perf_counter() - start)
    window = find_window(texture_scores(image, PATCH))
    assert window is not None
    print(f"real image window (top, left, side) in patches: {window}")
    assert out[rotated_key("rgb")].sum() == window[2] ** 2
    assert min(durations) < 0.020
