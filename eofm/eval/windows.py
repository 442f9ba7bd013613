"""Square windows of the encoder's native size S on whole scenes: sliding windows for inference,
random labelled windows for training.

Scenes are arrays [H, W, ...]; one smaller than a window is padded by reflection (bottom, right).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from eofm.data import augment, pipeline
from eofm.infer import tiling

# Length of the index source of the training windows: any number works, an index only seeds a
# draw (see `TrainingWindows.random_map`).
_NUM_INDICES = 4096


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """[H, W, ...] padded by reflection to at least size x size."""
    ph, pw = max(0, size - x.shape[0]), max(0, size - x.shape[1])
    if not (ph or pw):
        return x
    return np.pad(x, [(0, ph), (0, pw)] + [(0, 0)] * (x.ndim - 2), mode="symmetric")


def sliding_window(
    predict: Callable[[dict[str, np.ndarray]], jax.Array],
    images: dict[str, np.ndarray],
    window: int,
    stride: int,
    num_classes: int,
    batch_size: int = 8,
) -> np.ndarray:
    """Logits f32[H, W, K] of whole scenes {key: [H, W, C]}, blended over overlapping windows.

    `predict` maps {key: [N, window, window, C]} to logits [N, window, window, K]; every call
    gets N = batch_size windows (the last batch is padded with repeats and cut). The windows and
    the smooth blend are those of whole-scene inference (`eofm.infer.tiling`): a scene map made
    by scripts/infer_scene.py with the same head equals this one.
    """
    h, w = next(iter(images.values())).shape[:2]
    padded = {k: pad_to(v, window) for k, v in images.items()}
    hp, wp = next(iter(padded.values())).shape[:2]
    scene = tiling.Tile(0, 0, 0, hp, 0, wp)
    corners = tiling.windows_for(scene, window, stride, hp, wp)
    weights = tiling.blend_weights(window, tiling.overlap_for(window, stride))
    accumulator = tiling.TileAccumulator(scene, weights, 1, num_classes)
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        full = chunk + chunk[-1:] * (batch_size - len(chunk))
        batch = {
            k: np.stack([v[y : y + window, x : x + window] for y, x in full])
            for k, v in padded.items()
        }
        accumulator.add(chunk, np.asarray(predict(batch))[: len(chunk)])
    logits, _ = accumulator.result()
    return logits[:h, :w]


def window_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Sums of x [H, W] over every size x size window: [H - size + 1, W - size + 1]."""
    c = np.pad(np.cumsum(np.cumsum(x, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
    return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]


class TrainingWindows(grain.transforms.RandomMap):
    """Random training windows, a grain transform of example indices (see `training_dataset`).

    A draw picks a scene in proportion to its labelled training pixels, then a top-left corner
    uniformly among the admissible ones (the window holds a labelled pixel and avoids the
    held-out region), then the same random flips and 90-degree rotation for every key and the
    mask. Held-out pixels are unlabelled (-1) in the windows.

    Args:
      images: per scene {key: f32[H, W, C]} (normalised).
      masks: per scene int[H, W] classes, -1 = unlabelled.
      held_out: per scene bool[H, W], the test region.
      size: the window side S in pixels.
    """

    def __init__(
        self,
        images: Sequence[dict[str, np.ndarray]],
        masks: Sequence[np.ndarray],
        held_out: Sequence[np.ndarray],
        size: int,
    ):
        self.size = size
        self.keys = tuple(images[0])
        self.augment = augment.RandomCropFlipRotate(self.keys, size=size, mask_keys=("mask",))
        self.images = [{k: pad_to(v, size) for k, v in scene.items()} for scene in images]
        self.masks = [
            pad_to(np.where(out, -1, m), size).astype(np.int32) for m, out in zip(masks, held_out)
        ]
        self.corners = []  # per scene: (rows, cols) of the admissible top-left corners
        for mask, out in zip(self.masks, held_out):
            labelled = window_sums(mask >= 0, size) > 0
            clear = window_sums(pad_to(out, size), size) == 0
            self.corners.append(np.nonzero(labelled & clear))
        areas = np.asarray(
            [float((m >= 0).sum()) * (len(c[0]) > 0) for m, c in zip(self.masks, self.corners)]
        )
        if areas.sum() == 0:
            raise ValueError(
                f"no {size} px training window holds a labelled pixel outside the test region"
            )
        self.weights = areas / areas.sum()

    def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One window {key: f32[S, S, C], "mask": int32[S, S]}."""
        # grain seeds `rng` by the position in this process's slice of the indices, the same on
        # every process; the index itself differs between processes.
        rng = np.random.default_rng([index, int(rng.integers(2**63))])
        i = rng.choice(len(self.masks), p=self.weights)
        rows, cols = self.corners[i]
        j = rng.integers(len(rows))
        box = (slice(rows[j], rows[j] + self.size), slice(cols[j], cols[j] + self.size))
        window = {k: v[box] for k, v in self.images[i].items()}
        return self.augment.random_map({**window, "mask": self.masks[i][box]}, rng)


def training_dataset(
    sampler: TrainingWindows,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Batches {key: f32[B, S, S, C], "mask": int32[B, S, S]} of this process's training windows,
    B = `batch_size`, endless; the same `seed` gives the same batches."""
    return pipeline.make_dataset(
        range(_NUM_INDICES),
        batch_size=batch_size,
        seed=seed,
        shuffle=False,
        transforms=[sampler],
        process_index=process_index,
        process_count=process_count,
    )
