"""Dense tasks on tapped encoder blocks: semantic segmentation and Siamese change detection.

Protocol (PANGAEA-like):
- Scenes come from a source whose items hold the image keys and a "mask" (int class per pixel,
  -1 = nodata / unlabelled: never scored, never trained on).
- Split: whole scenes (`data.train_ids` / `data.test_ids`), or a spatial hold-out `test_region`
  (top, left, height, width as fractions) inside every scene; training windows never overlap it.
- Normalisation: the encoder's pretraining method with per-band statistics of the training pixels
  of each (key, sensor). A test scene of a sensor absent from training (e.g. Landsat 5 TM -> 7
  ETM+) uses its own pixels' statistics, which needs no labels; the report says which was used.
- Training: random windows of the encoder's native size (random 90-degree rotation and flip, the
  same for every key and the mask), cross-entropy over labelled pixels only; the encoder frozen
  (fit.finetune=True trains it with LLRD).
- Inference: sliding windows of the native size with `window_stride` overlap, logits averaged;
  scenes smaller than a window are padded by reflection.
- Segmentation reports miou_macro, iou_micro, oa and mf1; change detection the change class's
  precision, recall, f1 and iou over labelled pixels.
- Change detection: one encoder applied to both dates (Siamese); per tapped level the grids are
  fused by `diff` (after - before) or `concat`, then the head. Corruptions hit the second date only
  (a misregistration, for the geometric ones), the reference stays.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from eofm import sensors
from eofm.data import augment, datasets, normalize, stats
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import corruptions, encoders, heads, metrics, plots, report, trainer

TASKS = ("segmentation", "change_detection")


@dataclasses.dataclass
class Scene:
    """One scene: raw images {key: f32[H, W, C]}, validity, mask int32[H, W] (-1 ignored)."""

    id: str
    raw: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    mask: np.ndarray
    specs: dict[str, SensorSpec]
    held_out: np.ndarray  # bool[H, W]: the test region (all False for whole-scene splits)

    def crop(self, box: tuple[slice, slice]) -> Scene:
        return Scene(
            self.id,
            {k: v[box] for k, v in self.raw.items()},
            {k: v[box] for k, v in self.valid.items()},
            self.mask[box],
            self.specs,
            np.zeros(self.mask[box].shape, bool),
        )


def _region(shape: tuple[int, int], region: Sequence[float]) -> tuple[slice, slice]:
    top, left, height, width = region
    h, w = shape
    return (
        slice(int(round(top * h)), int(round((top + height) * h))),
        slice(int(round(left * w)), int(round((left + width) * w))),
    )


def load_scenes(config: ml_collections.ConfigDict) -> tuple[list[Scene], list[Scene], list[str]]:
    """(train scenes, test scenes, class names) of `config.data`."""
    d = config.data
    source = datasets.make_source(d.source, **d.source_args)
    missing = [k for k in d.inputs if k not in source.specs]
    if missing:
        raise ValueError(f"source {d.source!r} has images {sorted(source.specs)}, not {missing}")
    spec_of = getattr(source, "spec_of", lambda i: source.specs)
    scenes = []
    for i in range(len(source)):
        item = source[i]
        mask = np.asarray(item["mask"], np.int32)
        scenes.append(
            Scene(
                str(item["id"]),
                {k: np.asarray(item[k], np.float32) for k in d.inputs},
                {k: np.asarray(item[valid_key(k)]) for k in d.inputs},
                mask,
                {k: spec_of(i)[k] for k in d.inputs},
                np.zeros(mask.shape, bool),
            )
        )
    by_id = {s.id: s for s in scenes}
    unknown = [i for i in (*d.train_ids, *d.test_ids) if i not in by_id]
    if unknown:
        raise ValueError(f"scene ids {unknown} not in {d.source!r} (it has {sorted(by_id)})")
    names = list(source.label_names["mask"])
    if d.test_ids:
        train = (
            [by_id[i] for i in d.train_ids]
            if d.train_ids
            else [s for s in scenes if s.id not in d.test_ids]
        )
        return train, [by_id[i] for i in d.test_ids], names
    if not config.test_region:
        raise ValueError("give data.test_ids or a test_region to hold out")
    train, test = [], []
    for s in scenes:
        box = _region(s.mask.shape, config.test_region)
        s.held_out[box] = True
        train.append(s)
        test.append(s.crop(box))
    return train, test, names


class Normalizers:
    """Per (key, sensor) normalisation with training-pixel statistics (see module docstring)."""

    def __init__(self, train: list[Scene], method: str):
        self.method = method
        self._stats: dict[tuple, dict] = {}
        self._normalize: dict[tuple, normalize.Normalize] = {}
        self._own_pixels: dict[str, list[str]] = {}  # "key:sensor" -> test scenes
        groups: dict[tuple[str, str], list] = {}
        for s in train:
            for k, spec in s.specs.items():
                keep = ~s.held_out
                groups.setdefault((k, spec.sensor), []).append((s.raw[k][keep], s.valid[k][keep]))
        for (k, sensor), chunks in groups.items():
            bands = next(s.specs[k].bands for s in train if s.specs[k].sensor == sensor)
            self._stats[(k, sensor)] = stats.compute_band_stats(chunks, bands)

    @property
    def sources(self) -> dict[str, str]:
        """Where each "key:sensor" got its statistics, for the report."""
        out = {f"{k[0]}:{k[1]}": "training pixels" for k in self._stats if len(k) == 2}
        for name, scenes in self._own_pixels.items():
            out[name] = f"pixels of test scene {', '.join(scenes)}"
        return out

    def _key(self, scene: Scene, key: str) -> tuple:
        """Statistics key: (key, sensor), or (key, sensor, scene) for a sensor not in training,
        whose statistics come from that scene's own pixels."""
        spec = scene.specs[key]
        if (key, spec.sensor) in self._stats:
            return key, spec.sensor
        own = (key, spec.sensor, scene.id)
        if own not in self._stats:
            self._stats[own] = stats.compute_band_stats(
                [(scene.raw[key], scene.valid[key])], spec.bands
            )
            self._own_pixels.setdefault(f"{key}:{spec.sensor}", []).append(scene.id)
        return own

    def band_stats(self, scene: Scene, key: str) -> dict[str, dict[str, float]]:
        """The per-band statistics that normalise `scene.raw[key]`."""
        return self._stats[self._key(scene, key)]

    def range(self, scene: Scene, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-band (min, max) of the statistics: the corruptions' value range."""
        return corruptions.band_range(self.band_stats(scene, key), scene.specs[key].bands)

    def __call__(self, scene: Scene, key: str, raw=None, valid=None) -> np.ndarray:
        """Normalised `scene.raw[key]` (or `raw`, e.g. a corrupted copy, with `valid`)."""
        k = self._key(scene, key)
        if k not in self._normalize:
            self._normalize[k] = normalize.Normalize.of_band_stats(
                key, scene.specs[key], self.method, self._stats[k]
            )
        raw = scene.raw[key] if raw is None else raw
        valid = scene.valid[key] if valid is None else valid
        return self._normalize[k].map({key: raw, valid_key(key): valid})[key]


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - x.shape[0]), max(0, size - x.shape[1])
    if not (ph or pw):
        return x
    return np.pad(x, [(0, ph), (0, pw)] + [(0, 0)] * (x.ndim - 2), mode="symmetric")


def _starts(n: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(n - window, 0) + 1, stride))
    if starts[-1] != max(n - window, 0):
        starts.append(n - window)
    return starts


def sliding_window(
    predict: Callable[[dict[str, np.ndarray]], jax.Array],
    images: dict[str, np.ndarray],
    window: int,
    stride: int,
    num_classes: int,
    batch_size: int = 8,
) -> np.ndarray:
    """Logits f32[H, W, K] of whole scenes {key: [H, W, C]}, averaged over overlapping windows.

    `predict` maps {key: [N, window, window, C]} to logits [N, window, window, K].
    """
    h, w = next(iter(images.values())).shape[:2]
    padded = {k: _pad_to(v, window) for k, v in images.items()}
    hp, wp = next(iter(padded.values())).shape[:2]
    corners = [(y, x) for y in _starts(hp, window, stride) for x in _starts(wp, window, stride)]
    total = np.zeros((hp, wp, num_classes), np.float32)
    count = np.zeros((hp, wp, 1), np.float32)
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        batch = {
            k: np.stack([v[y : y + window, x : x + window] for y, x in chunk])
            for k, v in padded.items()
        }
        logits = np.asarray(predict(batch))
        for (y, x), out in zip(chunk, logits):
            total[y : y + window, x : x + window] += out
            count[y : y + window, x : x + window] += 1
    return (total / count)[:h, :w]


def _window_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Sums of x [H, W] over every size x size window: [H - size + 1, W - size + 1]."""
    c = np.pad(np.cumsum(np.cumsum(x, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
    return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]


class WindowSampler:
    """Random training windows (normalised images + mask), uniform over the windows that hold a
    labelled pixel and avoid the held-out region."""

    def __init__(self, scenes: list[Scene], norm: Normalizers, keys, window: int, batch: int):
        self.keys, self.window, self.batch = tuple(keys), window, batch
        # The same random 90-degree rotation and flips for every key and the mask.
        self.augment = augment.RandomCropFlipRotate(self.keys, size=window, mask_keys=("mask",))
        self.images = [{k: _pad_to(norm(s, k), window) for k in keys} for s in scenes]
        self.masks = [
            _pad_to(np.where(s.held_out, -1, s.mask), window).astype(np.int32) for s in scenes
        ]
        self.corners = []  # per scene: (rows, cols) of the admissible top-left corners
        for scene, mask in zip(scenes, self.masks):
            labelled = _window_sums(mask >= 0, window) > 0
            clear = _window_sums(_pad_to(scene.held_out, window), window) == 0
            self.corners.append(np.nonzero(labelled & clear))
        # Scenes are drawn in proportion to their labelled training pixels.
        areas = np.asarray(
            [float((m >= 0).sum()) * (len(c[0]) > 0) for m, c in zip(self.masks, self.corners)]
        )
        if areas.sum() == 0:
            raise ValueError(
                f"no {window} px training window holds a labelled pixel outside the test region"
            )
        self.weights = areas / areas.sum()

    def _window(self, rng: np.random.Generator):
        i = rng.choice(len(self.masks), p=self.weights)
        rows, cols = self.corners[i]
        j = rng.integers(len(rows))
        box = (slice(rows[j], rows[j] + self.window), slice(cols[j], cols[j] + self.window))
        window = {k: self.images[i][k][box] for k in self.keys}
        return self.augment.random_map({**window, "mask": self.masks[i][box]}, rng)

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        windows = [self._window(rng) for _ in range(self.batch)]
        return {k: np.stack([w[k] for w in windows]) for k in (*self.keys, "mask")}


def masked_cross_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over pixels with mask >= 0.  logits [B, H, W, K], mask int[B, H, W]."""
    labelled = mask >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(mask, 0))
    return jnp.sum(ce * labelled) / jnp.maximum(jnp.sum(labelled), 1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a dense run feeds its head: task, image keys, tapped blocks, fusion, windows."""

    task: str
    keys: tuple[str, ...]  # (image,) or (before, after)
    taps: tuple[int, ...]
    fusion: str
    window: int  # the encoder's native size
    stride: int
    num_classes: int

    def forward(self, adapters: dict[str, encoders.Adapter]):
        """(model, head, {key: images}) -> logits [B, S, S, K] for one sensor layout."""
        keys, taps = self.keys, self.taps

        def forward(model, head, batch):
            if self.task == "segmentation":
                levels = adapters[keys[0]].levels(model, batch[keys[0]], taps)
            else:
                before = adapters[keys[0]].levels(model, batch[keys[0]], taps)
                after = adapters[keys[1]].levels(model, batch[keys[1]], taps)
                levels = heads.fuse_siamese(before, after, self.fusion)
            return head(levels, (self.window, self.window))

        return forward


def _rgb_indices(spec: SensorSpec) -> list[int]:
    """Bands nearest 665 / 560 / 490 nm (the first band thrice when none is optical)."""
    sensor = sensors.get_sensor(spec.sensor)
    centres = [sensor.band(b).center_nm for b in spec.bands]
    if all(c is None for c in centres):
        return [0, 0, 0]
    dist = lambda c, t: abs(c - t) if c is not None else np.inf
    return [int(np.argmin([dist(c, t) for c in centres])) for t in (665, 560, 490)]


class Evaluator:
    """Sliding-window predictions of a trained head on (optionally corrupted) test scenes."""

    def __init__(self, layout: Layout, encoder, model, head, norm: Normalizers, batch_size, seed):
        self.layout, self.encoder, self.norm = layout, encoder, norm
        self.model, self.head = model, head
        self.batch_size, self.seed = batch_size, seed
        self._predictors = {}
        self._clean = {}  # scene id -> normalised clean images

    def predict(self, scene: Scene, images: dict[str, np.ndarray]) -> np.ndarray:
        """Class map int[H, W] of normalised scene images {key: [H, W, C]}."""
        lay = self.layout
        specs = tuple(scene.specs[k] for k in lay.keys)
        if specs not in self._predictors:  # one jitted forward per sensor layout
            f = lay.forward({k: self.encoder.adapt(scene.specs[k]) for k in lay.keys})
            self._predictors[specs] = jax.jit(lambda batch: f(self.model, self.head, batch))
        logits = sliding_window(
            self._predictors[specs],
            images,
            lay.window,
            lay.stride,
            lay.num_classes,
            self.batch_size,
        )
        return logits.argmax(-1)

    def clean(self, scene: Scene) -> dict[str, np.ndarray]:
        if scene.id not in self._clean:
            self._clean[scene.id] = {k: self.norm(scene, k) for k in self.layout.keys}
        return self._clean[scene.id]

    def inputs(
        self, scene: Scene, index: int, corruption=None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Normalised images and the reference of test scene `index`, clean or under
        (name, severity)."""
        if corruption is None:
            return self.clean(scene), scene.mask
        name, severity = corruption
        key = self.layout.keys[-1]  # segmentation: the image; change detection: the second date
        lo, hi = self.norm.range(scene, key)
        rng = jax.random.fold_in(jax.random.key(self.seed), corruptions.CORRUPTIONS.index(name))
        rng = jax.random.fold_in(rng, index)
        # The reference is unknown where the image came from outside the scene (-1); validity
        # follows the image's reflected content there (-1 casts to True).
        masks = {"valid": scene.valid[key][None]}
        moves_mask = self.layout.task == "segmentation"
        if moves_mask:
            masks["mask"] = scene.mask[None]
        out, moved = corruptions.corrupt_scaled(
            name,
            scene.raw[key][None],
            severity,
            rng[None],
            lo,
            hi,
            masks,
            fill_label=-1 if moves_mask else None,
        )
        valid = np.asarray(moved["valid"][0]).astype(bool)
        images = {**self.clean(scene), key: self.norm(scene, key, np.asarray(out[0]), valid)}
        return images, np.asarray(moved["mask"][0]) if moves_mask else scene.mask

    def evaluate(self, scenes: list[Scene], corruption=None) -> tuple[dict, list[np.ndarray]]:
        """(metrics over all scenes, predicted class maps)."""
        segmentation = self.layout.task == "segmentation"
        acc = (
            metrics.SegmentationMetrics(self.layout.num_classes)
            if segmentation
            else metrics.ChangeMetrics()
        )
        preds = []
        for index, scene in enumerate(scenes):
            images, mask = self.inputs(scene, index, corruption)
            pred = self.predict(scene, images)
            if segmentation:
                acc.update(pred[None], mask[None])
            else:
                acc.update(pred[None], (mask == 1)[None], (mask == 0)[None])
            preds.append(pred)
        return acc.result(), preds


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the dense head of `config`, evaluates clean and corrupted, writes the report."""
    start = time.perf_counter()
    task = config.task
    if task not in TASKS:
        raise ValueError(f"unknown dense task {task!r}; expected one of {TASKS}")
    keys = tuple(config.data.inputs)
    if len(keys) != (1 if task == "segmentation" else 2):
        raise ValueError(f"{task} takes {1 if task == 'segmentation' else 2} image keys: {keys}")
    train, test, class_names = load_scenes(config)
    encoder = encoders.load_encoder(config.encoder)
    window = encoder.image_size
    layout = Layout(
        task=task,
        keys=keys,
        taps=tuple(config.head.taps) or encoder.default_taps(),
        fusion=config.head.fusion,
        window=window,
        stride=max(1, int(round(window * config.window_stride))),
        num_classes=len(class_names),
    )
    norm = Normalizers(train, config.data.normalization or encoder.normalization)
    train_specs = {k: {s.specs[k] for s in train} for k in keys}
    mixed = {k: v for k, v in train_specs.items() if len(v) > 1}
    if mixed:
        raise ValueError(f"training scenes mix sensors for keys {sorted(mixed)}")
    width = encoder.embed_dim * (
        2 if task == "change_detection" and config.head.fusion == "concat" else 1
    )
    head = heads.dense_head(
        config.head.kind,
        width,
        len(layout.taps),
        layout.num_classes,
        channels=config.head.channels,
        rngs=nnx.Rngs(config.seed),
    )
    forward = layout.forward({k: encoder.adapt(next(iter(v))) for k, v in train_specs.items()})

    def loss_fn(model, head, batch):
        return masked_cross_entropy(forward(model, head, batch), batch["mask"]), {}

    settings = trainer.FitSettings.from_config(config.fit)
    sampler = WindowSampler(train, norm, keys, window, config.fit.batch_size)
    model, head, history = trainer.fit(encoder, head, loss_fn, sampler, settings, seed=config.seed)
    evaluator = Evaluator(layout, encoder, model, head, norm, config.batch_size, config.seed)
    clean, preds = evaluator.evaluate(test)
    headline = "miou_macro" if task == "segmentation" else "f1"
    result = {
        "task": task,
        "method": f"{config.head.kind} head, encoder {'finetuned' if settings.finetune else 'frozen'}",
        "encoder": report.encoder_card(config.encoder, encoder, test[0].specs[keys[0]]),
        "data": {
            "source": config.data.source,
            "keys": list(keys),
            "sensors": {s.id: {k: s.specs[k].sensor for k in keys} for s in train + test},
            "train": [s.id for s in train],
            "test": [s.id for s in test],
            "test_region": list(config.test_region),
            "labelled_test_pixels": int(sum((s.mask >= 0).sum() for s in test)),
            "normalization": norm.method,
            "statistics": norm.sources,
            "window": window,
            "stride": layout.stride,
            "classes": class_names,
        },
        "head": {**config.head.to_dict(), "taps": list(layout.taps)},
        "fit": {
            **dataclasses.asdict(settings),
            "batch_size": config.fit.batch_size,
            "history": history,
        },
        "metrics": clean,
        "headline_metric": headline,
    }
    result["robustness"] = report.robustness_sweep(
        config.robustness, lambda c: evaluator.evaluate(test, c)[0][headline], clean[headline]
    )
    result["seconds"] = time.perf_counter() - start
    report.write(
        workdir,
        result,
        class_names=class_names,
        overlay=_overlay(test, preds, keys, window, config.num_overlays),
    )
    return result


def _overlay(test: list[Scene], preds: list[np.ndarray], keys, window: int, count: int):
    """Up to `count` window-sized tiles of the test scenes with the most labelled pixels."""
    tiles = []
    for scene, pred in zip(test, preds):
        key = keys[-1]
        rgb = plots.display_rgb(scene.raw[key], _rgb_indices(scene.specs[key]))
        h, w = scene.mask.shape
        size = min(window, h, w)
        for y in _starts(h, size, size):
            for x in _starts(w, size, size):
                box = (slice(y, y + size), slice(x, x + size))
                tiles.append(
                    (int((scene.mask[box] >= 0).sum()), rgb[box], scene.mask[box], pred[box])
                )
    tiles = sorted(tiles, key=lambda t: -t[0])[:count]
    if not tiles or len({t[1].shape for t in tiles}) > 1:
        return None
    return {
        "images": np.stack([t[1] for t in tiles]),
        "truth": np.stack([t[2] for t in tiles]),
        "pred": np.stack([t[3] for t in tiles]).astype(np.int64),
        "max_items": len(tiles),
    }
