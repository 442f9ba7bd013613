"""Dense tasks on the encoder's feature levels: semantic segmentation and Siamese change detection.

Protocol (PANGAEA-like):
- Scenes come from a source whose items hold the image keys and a "mask" (int class per pixel,
  -1 = nodata / unlabelled: never scored, never trained on).
- Split: two builds of the source, one for training and one for testing (`data.train_split` /
  `data.test_split` passed as `split=`, `data.train_root` / `data.test_root` as `root=`); or whole
  scenes of one build (`data.train_ids` / `data.test_ids`); or a spatial hold-out `test_region`
  (top, left, height, width as fractions) inside every scene; training windows never overlap it.
  The report states the split in words, with the labelled pixels of each side, and the files
  each build read (`eofm.eval.provenance`).
- Normalisation: the encoder's pretraining method with per-band statistics of the training pixels
  of each (key, sensor). A test scene of a sensor absent from training (e.g. Landsat 5 TM -> 7
  ETM+) uses its own pixels' statistics, which needs no labels; the report says which was used.
- Training: random windows of the encoder's native size (`windows.TrainingWindows`: random
  90-degree rotation and flip, the same for every key and the mask), cross-entropy over labelled
  pixels only, each pixel weighted by its class (`fit.class_weights`: inverse frequency of the
  training pixels by default), with the shared training loop (`eofm.eval.fit`, in WORKDIR/fit);
  the encoder frozen (fit.finetune=True trains it with LLRD).
- Inference: sliding windows of the native size with `window_stride` overlap, logits blended
  with smooth weights that fall towards each window's edge (those of whole-scene inference, so
  scripts/infer_scene.py --head maps a scene as the evaluation does); scenes smaller than a
  window are padded by reflection.
- Segmentation reports miou_macro, iou_micro, oa and mf1; change detection the change class's
  precision, recall, f1 and iou over labelled pixels. The prediction is the argmax of the blended
  logits; binary tasks also report the test metrics at the class-1 probability threshold that
  maximises F1 on the training pixels (`result["threshold"]`).
- Baselines on the same test pixels (`eofm.eval.pixel_baselines`): constant maps and the best
  one-band threshold fitted on the training pixels.
- Change detection: one encoder applied to both dates (Siamese); per feature level the grids are
  fused by `diff` (after - before) or `concat`, then the head. Corruptions hit the second date only
  (a misregistration, for the geometric ones), the reference stays.

A task (`DENSE_TASKS`) says what differs between the two: image keys, how the encoder reads a
batch, which image a corruption hits, the metrics and the headline one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from eofm import sensors
from eofm.data import datasets, normalize, stats
from eofm.data.spec import SensorSpec, specs_to_json, valid_key
from eofm.eval import (
    corruptions,
    encoders,
    heads,
    metrics,
    pixel_baselines,
    plots,
    provenance,
    report,
    windows,
)
from eofm.eval import fit as fit_lib
from eofm.infer import tiling


@dataclasses.dataclass
class Scene:
    """One scene: raw images {key: f32[H, W, C]}, validity, mask int32[H, W] (-1 ignored)."""

    id: str
    raw: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    mask: np.ndarray
    specs: dict[str, SensorSpec]
    held_out: np.ndarray  # bool[H, W]: the test region (all False for whole-scene splits)
    origin: tuple[int, int] = (0, 0)  # (row, col) of the first pixel in the source's scene

    def crop(self, box: tuple[slice, slice]) -> Scene:
        return Scene(
            self.id,
            {k: v[box] for k, v in self.raw.items()},
            {k: v[box] for k, v in self.valid.items()},
            self.mask[box],
            self.specs,
            np.zeros(self.mask[box].shape, bool),
            (self.origin[0] + box[0].start, self.origin[1] + box[1].start),
        )


def _region(shape: tuple[int, int], region: Sequence[float]) -> tuple[slice, slice]:
    top, left, height, width = region
    h, w = shape
    return (
        slice(round(top * h), round((top + height) * h)),
        slice(round(left * w), round((left + width) * w)),
    )


@dataclasses.dataclass
class SceneSplit:
    """Train and test scenes, the sources they came from ({"train", "test"} or {"train+test"}) and
    the split in words."""

    train: list[Scene]
    test: list[Scene]
    class_names: list[str]
    sources: dict[str, Any]
    description: str


def _scenes_of(source, inputs: Sequence[str]) -> list[Scene]:
    """Every item of `source` as a Scene of the image keys `inputs`."""
    spec_of = getattr(source, "spec_of", lambda i: source.specs)
    scenes = []
    for i in range(len(source)):
        item = source[i]
        mask = np.asarray(item["mask"], np.int32)
        scenes.append(
            Scene(
                str(item["id"]),
                {k: np.asarray(item[k], np.float32) for k in inputs},
                {k: np.asarray(item[valid_key(k)]) for k in inputs},
                mask,
                {k: spec_of(i)[k] for k in inputs},
                np.zeros(mask.shape, bool),
            )
        )
    return scenes


def _build_words(split: str, root: str) -> str:
    """A build in words: the split (and root) it selects, or the root it reads."""
    if split:
        return f"the {split!r} split" + (f" under {root}" if root else "")
    return f"the scenes under {root}" if root else "the configured scenes"


def _build_source(d: ml_collections.ConfigDict, split: str = "", root: str = ""):
    """Source `d.source` with `d.source_args`, `split=split` and `root=root` where given; an error
    names the build when it has no scene or lacks an image key."""
    args = {
        **d.source_args,
        **({"split": split} if split else {}),
        **({"root": root} if root else {}),
    }
    source = datasets.make_source(d.source, **args)
    where = f"source {d.source!r} ({_build_words(split, args.get('root', ''))})"
    if len(source) == 0:
        raise ValueError(f"{where} has no scenes")
    missing = [k for k in d.inputs if k not in source.specs]
    if missing:
        raise ValueError(f"{where} has images {sorted(source.specs)}, not {missing}")
    return source


def _labelled_words(scenes: list[Scene]) -> str:
    """The scene ids (their number past 6) and their labelled pixels outside any test region, as
    in "Nanjing, 14,756 labelled pixels"."""
    ids = ", ".join(s.id for s in scenes) if len(scenes) <= 6 else f"{len(scenes)} scenes"
    pixels = sum(int(pixel_baselines.training_pixels(s).sum()) for s in scenes)
    return f"{ids}, {pixels:,} labelled pixels"


def _separate_split(config: ml_collections.ConfigDict) -> SceneSplit:
    """Train scenes from one build of the source, test scenes from another."""
    d = config.data
    if d.train_ids or d.test_ids or config.test_region:
        raise ValueError(
            "data.train_split / test_split / train_root / test_root choose the scenes: leave"
            " data.train_ids, data.test_ids and test_region empty"
        )
    train_source = _build_source(d, d.train_split, d.train_root)
    test_source = _build_source(d, d.test_split, d.test_root)
    names = list(train_source.label_names["mask"])
    if list(test_source.label_names["mask"]) != names:
        raise ValueError(
            f"train classes {names} differ from test classes {test_source.label_names['mask']}"
        )
    train, test = _scenes_of(train_source, d.inputs), _scenes_of(test_source, d.inputs)
    # The root of source_args is named only where no split tells the builds apart.
    words = lambda split, root: _build_words(
        split, root or ("" if split else d.source_args.get("root", ""))
    )
    description = (
        f"train: {words(d.train_split, d.train_root)} ({_labelled_words(train)});"
        f" test: {words(d.test_split, d.test_root)} ({_labelled_words(test)})"
    )
    sources = {"train": train_source, "test": test_source}
    return SceneSplit(train, test, names, sources, description)


def _one_source_split(config: ml_collections.ConfigDict) -> SceneSplit:
    """Whole scenes by id, or a test region held out inside every scene, of one build."""
    d = config.data
    source = _build_source(d)
    scenes = _scenes_of(source, d.inputs)
    by_id = {s.id: s for s in scenes}
    unknown = [i for i in (*d.train_ids, *d.test_ids) if i not in by_id]
    if unknown:
        raise ValueError(f"scene ids {unknown} not in {d.source!r} (it has {sorted(by_id)})")
    names = list(source.label_names["mask"])
    sources = {"train+test": source}
    if d.test_ids:
        train = (
            [by_id[i] for i in d.train_ids]
            if d.train_ids
            else [s for s in scenes if s.id not in d.test_ids]
        )
        test = [by_id[i] for i in d.test_ids]
        description = (
            f"train scenes {_labelled_words(train)}; test scenes {_labelled_words(test)}"
            " (whole scenes)"
        )
        return SceneSplit(train, test, names, sources, description)
    if not config.test_region:
        raise ValueError("give data.test_ids, data.train_split / test_split or a test_region")
    train, test = [], []
    for s in scenes:
        box = _region(s.mask.shape, config.test_region)
        s.held_out[box] = True
        train.append(s)
        test.append(s.crop(box))
    top, left, height, width = config.test_region
    description = (
        f"spatial hold-out: the region (top {top:g}, left {left:g}, height {height:g}, width"
        f" {width:g}) of every scene is test ({_labelled_words(test)}), the rest train"
        f" ({_labelled_words(train)})"
    )
    return SceneSplit(train, test, names, sources, description)


def load_split(config: ml_collections.ConfigDict) -> SceneSplit:
    """The train and test scenes of `config.data` (see the module docstring)."""
    d = config.data
    if d.train_split or d.test_split or d.train_root or d.test_root:
        return _separate_split(config)
    return _one_source_split(config)


def load_scenes(config: ml_collections.ConfigDict) -> tuple[list[Scene], list[Scene], list[str]]:
    """(train scenes, test scenes, class names) of `config.data`."""
    split = load_split(config)
    return split.train, split.test, split.class_names


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

    def training_stats(self, specs: dict[str, SensorSpec]) -> dict[str, dict]:
        """{key: {"sensor", "bands", "stats": {band: {...}}}}: the training-pixel statistics of
        each key of `specs` (the layout of `eofm.data.stats.read_stats_json`)."""
        return {
            k: {"sensor": s.sensor, "bands": list(s.bands), "stats": self._stats[(k, s.sensor)]}
            for k, s in specs.items()
        }

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


def masked_cross_entropy(
    logits: jax.Array, mask: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Class-weighted mean cross-entropy over pixels with mask >= 0: sum(w[y] ce) / sum(w[y]).

    logits [B, H, W, K], mask int[B, H, W], weights f32[K] (None: all 1); 0 without a labelled
    pixel of positive weight."""
    labelled = mask >= 0
    label = jnp.maximum(mask, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
    w = labelled if weights is None else jnp.where(labelled, jnp.asarray(weights)[label], 0.0)
    total = jnp.sum(w)
    return jnp.sum(ce * w) / jnp.where(total > 0, total, 1.0)


def class_pixel_counts(scenes: list[Scene], num_classes: int) -> np.ndarray:
    """int64[K]: training pixels (labelled, outside any test region) of each class."""
    counts = np.zeros(num_classes, np.int64)
    for s in scenes:
        counts += np.bincount(s.mask[pixel_baselines.training_pixels(s)], minlength=num_classes)
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """f64[K] w_k = N / (K n_k) of class pixel counts n_k (N their sum); 0 for an absent class."""
    counts = np.asarray(counts, np.float64)
    out = np.zeros_like(counts)
    present = counts > 0
    out[present] = counts.sum() / (len(counts) * counts[present])
    return out


def class_weights(setting, counts: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The loss's class weights of `fit.class_weights` ("inverse_frequency", "none" or K floats)
    and the training pixel counts: {"setting", "weights": {class: w}, "training_pixels":
    {class: n}, "warning" (a class without training pixels, else absent)}."""
    k = len(class_names)
    if isinstance(setting, str):
        if setting not in ("inverse_frequency", "none"):
            raise ValueError(
                f"fit.class_weights {setting!r}: expected 'inverse_frequency', 'none' or {k} floats"
            )
        weights = (
            inverse_frequency_weights(counts) if setting == "inverse_frequency" else np.ones(k)
        )
    else:
        weights = np.asarray(setting, np.float64)
        if weights.shape != (k,) or (weights < 0).any():
            raise ValueError(f"fit.class_weights {setting}: expected {k} non-negative floats")
    out = {
        "setting": setting if isinstance(setting, str) else weights.tolist(),
        "weights": dict(zip(class_names, weights.tolist())),
        "training_pixels": dict(zip(class_names, np.asarray(counts).tolist())),
    }
    absent = [name for name, n in zip(class_names, counts) if n == 0]
    if absent:
        out["warning"] = f"no training pixel of class {', '.join(absent)}" + (
            ": weight 0" if setting == "inverse_frequency" else ""
        )
    return out


def _check_keys(task: str, keys: tuple[str, ...], count: int) -> None:
    if len(keys) != count:
        raise ValueError(f"{task} takes {count} image keys (data.inputs), got {keys}")


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """Classes per pixel of one image; a corruption moves the image and its reference."""

    keys: tuple[str]  # (image,)
    taps: tuple[int, ...] | None = None  # encoder blocks to read (None: the family default)
    headline: ClassVar[str] = "miou_macro"
    moves_reference: ClassVar[bool] = True

    def __post_init__(self):
        _check_keys("segmentation", self.keys, 1)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Segmentation:
        return cls(tuple(config.data.inputs), tuple(config.head.taps) or None)

    @property
    def corrupted_key(self) -> str:
        return self.keys[0]

    def levels(self, model, batch: dict[str, jax.Array], specs: dict[str, SensorSpec]) -> list:
        """Feature levels [B, h_i, w_i, D_i] of a batch {key: f32[B, S, S, C]}."""
        (key,) = self.keys
        return model.features(batch[key], specs[key], self.taps)["levels"]

    def level_shapes(self, encoder, specs: dict[str, SensorSpec]) -> list[tuple[int, int]]:
        """(stride, width) of each level of `levels`."""
        return encoder.shapes(specs[self.keys[0]], self.taps)["levels"]

    def score(self, preds: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> dict:
        """miou_macro, iou_micro, oa, mf1 of class maps int[H, W] against references."""
        acc = metrics.SegmentationMetrics(num_classes)
        for pred, mask in zip(preds, masks):
            acc.update(pred[None], mask[None])
        return acc.result()


@dataclasses.dataclass(frozen=True)
class ChangeDetection:
    """Change (1) or not (0) per pixel of two dates, both read by the same encoder and fused per
    level; a corruption hits the second date only, the reference stays."""

    keys: tuple[str, str]  # (before, after)
    taps: tuple[int, ...] | None = None
    fusion: str = "diff"  # `heads.FUSIONS`; concat doubles each level's width
    headline: ClassVar[str] = "f1"
    moves_reference: ClassVar[bool] = False

    def __post_init__(self):
        _check_keys("change_detection", self.keys, 2)
        if self.fusion not in heads.FUSIONS:
            raise ValueError(
                f"unknown head.fusion {self.fusion!r}; expected one of {heads.FUSIONS}"
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ChangeDetection:
        return cls(tuple(config.data.inputs), tuple(config.head.taps) or None, config.head.fusion)

    @property
    def corrupted_key(self) -> str:
        return self.keys[1]

    def levels(self, model, batch: dict[str, jax.Array], specs: dict[str, SensorSpec]) -> list:
        """Fused feature levels [B, h_i, w_i, D_i or 2 D_i] of both dates {key: f32[B, S, S, C]}."""
        before, after = (model.features(batch[k], specs[k], self.taps)["levels"] for k in self.keys)
        return heads.fuse_siamese(before, after, self.fusion)

    def level_shapes(self, encoder, specs: dict[str, SensorSpec]) -> list[tuple[int, int]]:
        levels = encoder.shapes(specs[self.keys[0]], self.taps)["levels"]
        return [(s, 2 * w) for s, w in levels] if self.fusion == "concat" else levels

    def score(self, preds: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> dict:
        """Change-class precision, recall, f1, iou over the labelled pixels (mask 1 or 0)."""
        del num_classes
        acc = metrics.ChangeMetrics()
        for pred, mask in zip(preds, masks):
            acc.update(pred[None], (mask == 1)[None], (mask == 0)[None])
        return acc.result()


DENSE_TASKS = {"segmentation": Segmentation, "change_detection": ChangeDetection}
DenseTask = Segmentation | ChangeDetection


def dense_task(config: ml_collections.ConfigDict) -> DenseTask:
    """The task of `config.task` on `config.data.inputs`, with `config.head`'s taps (and fusion)."""
    if config.task not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {config.task!r}; expected one of {list(DENSE_TASKS)}")
    return DENSE_TASKS[config.task].from_config(config)


def dense_logits(task: DenseTask, model, head, batch, specs) -> jax.Array:
    """Logits f32[B, S, S, K] of a batch {key: f32[B, S, S, C]} of images of `specs`."""
    size = batch[task.keys[0]].shape[1:3]
    return head(task.levels(model, batch, specs), size)


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

    def __init__(
        self,
        task: DenseTask,
        model,
        head,
        norm: Normalizers,
        *,
        window: int,
        stride: int,
        num_classes: int,
        batch_size: int,
        seed: int,
    ):
        self.task, self.model, self.head, self.norm = task, model, head, norm
        self.window, self.stride, self.num_classes = window, stride, num_classes
        self.batch_size, self.seed = batch_size, seed
        self._predictors = {}
        self._clean = {}  # scene id -> normalised clean images

    def logits(self, scene: Scene, images: dict[str, np.ndarray]) -> np.ndarray:
        """Blended logits f32[H, W, K] of normalised scene images {key: [H, W, C]}."""
        specs = {k: scene.specs[k] for k in self.task.keys}
        layout = tuple(specs.values())
        if layout not in self._predictors:  # one jitted forward per sensor layout
            self._predictors[layout] = encoders.jit_with_modules(
                lambda model, head, batch: dense_logits(self.task, model, head, batch, specs),
                self.model,
                self.head,
            )
        return windows.sliding_window(
            self._predictors[layout],
            images,
            self.window,
            self.stride,
            self.num_classes,
            self.batch_size,
        )

    def class1_probability(self, scene: Scene) -> np.ndarray:
        """f32[H, W] softmax probability of class 1 of a clean training scene."""
        images = {k: self.norm(scene, k) for k in self.task.keys}
        return _class1(self.logits(scene, images))

    def clean(self, scene: Scene) -> dict[str, np.ndarray]:
        if scene.id not in self._clean:
            self._clean[scene.id] = {k: self.norm(scene, k) for k in self.task.keys}
        return self._clean[scene.id]

    def inputs(
        self, scene: Scene, index: int, corruption=None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Normalised images and the reference of test scene `index`, clean or under
        (name, severity)."""
        if corruption is None:
            return self.clean(scene), scene.mask
        name, severity = corruption
        key, moves_mask = self.task.corrupted_key, self.task.moves_reference
        lo, hi = self.norm.range(scene, key)
        rng = jax.random.fold_in(jax.random.key(self.seed), corruptions.CORRUPTIONS.index(name))
        rng = jax.random.fold_in(rng, index)
        # The reference is unknown where the image came from outside the scene (-1); validity
        # follows the image's reflected content there (-1 casts to True).
        masks = {"valid": scene.valid[key][None]}
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

    def evaluate(
        self,
        scenes: list[Scene],
        corruption=None,
        threshold: pixel_baselines.Threshold | None = None,
    ) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
        """(the task's metrics over all scenes, predicted class maps: the argmax of the logits,
        and, from the same logits, the maps of the class-1 probability `threshold` ([] without
        one)); the clean evaluation prints a line per scene."""
        preds, thresholded, masks = [], [], []
        for index, scene in enumerate(scenes):
            start = time.perf_counter()
            images, mask = self.inputs(scene, index, corruption)
            logits = self.logits(scene, images)
            preds.append(logits.argmax(-1))
            if threshold is not None:
                thresholded.append(threshold.apply(_class1(logits)))
            masks.append(mask)
            if corruption is None:
                h, w = mask.shape
                print(
                    f"evaluate {index + 1}/{len(scenes)} | {scene.id} ({h} x {w} px)"
                    f" | {time.perf_counter() - start:.1f} s",
                    flush=True,
                )
        return self.task.score(preds, masks, self.num_classes), preds, thresholded


def _class1(logits: np.ndarray) -> np.ndarray:
    """f32[H, W] softmax probability of class 1 of logits [H, W, 2]."""
    return np.asarray(jax.nn.softmax(logits, axis=-1)[..., 1])


def _train_specs(train: list[Scene], keys: tuple[str, ...]) -> dict[str, SensorSpec]:
    """The one SensorSpec of each key across the training scenes."""
    specs = {k: {s.specs[k] for s in train} for k in keys}
    mixed = sorted(k for k, v in specs.items() if len(v) > 1)
    if mixed:
        raise ValueError(f"training scenes mix sensors for keys {mixed}")
    return {k: next(iter(v)) for k, v in specs.items()}


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the dense head of `config`, evaluates clean and corrupted, writes the report."""
    start = time.perf_counter()
    task = dense_task(config)
    workdir = report.prepare_workdir(workdir, config.encoder)
    keys = task.keys
    split = load_split(config)
    train, test, class_names = split.train, split.test, split.class_names
    num_classes = len(class_names)
    train_pixels = class_pixel_counts(train, num_classes)
    weighting = class_weights(config.fit.class_weights, train_pixels, class_names)
    weights = jnp.asarray(list(weighting["weights"].values()), jnp.float32)
    encoder = encoders.load_encoder(config.encoder)
    # An encoder that reads none of a scene's bands stops here, before any training.
    missing_bands = encoder.zero_filled_bands((k, s.specs[k]) for s in train + test for k in keys)
    window = encoder.image_size
    stride = max(1, round(window * config.window_stride))
    norm = Normalizers(train, config.data.normalization or encoder.normalization)
    specs = _train_specs(train, keys)
    level_shapes = task.level_shapes(encoder, specs)
    sampler = windows.TrainingWindows(
        [{k: norm(s, k) for k in keys} for s in train],
        [s.mask for s in train],
        [s.held_out for s in train],
        window,
    )

    def make_dataset(process_index: int, process_count: int):
        return windows.training_dataset(
            sampler,
            batch_size=config.fit.batch_size // process_count,
            seed=config.seed,
            process_index=process_index,
            process_count=process_count,
        )

    def make_head(rngs: nnx.Rngs) -> nnx.Module:
        return heads.dense_head(
            config.head.kind, level_shapes, num_classes, channels=config.head.channels, rngs=rngs
        )

    def loss_fn(model, head, batch):
        logits = dense_logits(task, model, head, batch, specs)
        return masked_cross_entropy(logits, batch["mask"], weights), {}

    inference = {
        "config": config.to_dict(),
        "classes": class_names,
        "inputs": specs_to_json(specs),
        "window": window,
        "stride": stride,
        "normalization": {"method": norm.method, "statistics": norm.training_stats(specs)},
        "encoder": encoder.describe(),
    }
    sensors_read = "+".join(spec.sensor for spec in specs.values())
    model, head, history = fit_lib.fit(
        config,
        workdir,
        encoder,
        name=f"{config.head.kind} {config.task} head of {num_classes} classes on {sensors_read}",
        make_head=make_head,
        loss_fn=loss_fn,
        make_dataset=make_dataset,
        input_keys=(*keys, "mask"),
        inference=inference,
    )
    evaluator = Evaluator(
        task,
        model,
        head,
        norm,
        window=window,
        stride=stride,
        num_classes=num_classes,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    # Binary tasks: the F1-optimal threshold of the training scenes, applied to the test logits.
    threshold = train_threshold(evaluator, train) if num_classes == 2 else None
    clean, preds, thresholded = evaluator.evaluate(test, threshold=threshold)
    headline = task.headline
    result = {
        "task": config.task,
        "method": (
            f"{config.head.kind} head, encoder {'finetuned' if config.fit.finetune else 'frozen'}"
        ),
        "encoder": report.encoder_card(encoder, missing_bands),
        "data": {
            "source": config.data.source,
            "keys": list(keys),
            "sensors": {s.id: {k: s.specs[k].sensor for k in keys} for s in train + test},
            "train": [s.id for s in train],
            "test": [s.id for s in test],
            "test_region": list(config.test_region),
            "split": split.description,
            "provenance": provenance.describe(split.sources),
            "labelled_train_pixels": int(train_pixels.sum()),
            "labelled_test_pixels": int(sum((s.mask >= 0).sum() for s in test)),
            "normalization": norm.method,
            "statistics": norm.sources,
            "window": window,
            "stride": stride,
            "classes": class_names,
        },
        "head": {**config.head.to_dict(), "levels": [list(level) for level in level_shapes]},
        "fit": {**config.fit.to_dict(), "class_weights": weighting, "history": history},
        "metrics": clean,
        "headline_metric": headline,
        "baselines": baselines(task, train, test, norm, class_names),
    }
    if "warning" in weighting:
        result["warnings"] = [f"class weights: {weighting['warning']}"]
    if threshold is not None:
        result["threshold"] = threshold_report(threshold, evaluator.task, test, thresholded)
        at_threshold = result["threshold"]["test_metrics"][headline]
        result["metrics"][f"{headline}_at_train_threshold"] = at_threshold
    result["robustness"] = report.robustness_sweep(
        config.robustness, lambda c: evaluator.evaluate(test, c)[0][headline], clean[headline]
    )
    result["seconds"] = time.perf_counter() - start
    report.write(
        workdir,
        result,
        class_names=class_names,
        overlay=_overlay(task, test, preds, window, config.num_overlays),
    )
    return result


def baselines(
    task: DenseTask, train: list[Scene], test: list[Scene], norm: Normalizers, class_names
) -> dict[str, dict[str, Any]]:
    """The task's `pixel_baselines` on the test scenes, thresholds fitted on the training pixels."""
    if isinstance(task, ChangeDetection):
        return pixel_baselines.change_baselines(task, train, test, norm)
    return pixel_baselines.segmentation_baselines(task, train, test, norm, class_names)


def train_threshold(evaluator: Evaluator, train: list[Scene]) -> pixel_baselines.Threshold:
    """The class-1 probability threshold maximising F1 on the training pixels."""
    values, positive = [], []
    for scene in train:
        keep = pixel_baselines.training_pixels(scene)
        values.append(evaluator.class1_probability(scene)[keep])
        positive.append(scene.mask[keep] == 1)
    return pixel_baselines.best_threshold(
        np.concatenate(values), np.concatenate(positive), "f1", both_directions=False
    )


def threshold_report(
    threshold: pixel_baselines.Threshold,
    task: DenseTask,
    test: list[Scene],
    thresholded: list[np.ndarray],
) -> dict[str, Any]:
    """The threshold, its training F1 and the test metrics (`task.score`, plus the class-1
    "test_f1") of the test maps `thresholded` at it."""
    masks = [s.mask for s in test]
    class1 = metrics.ChangeMetrics()
    for pred, mask in zip(thresholded, masks):
        class1.update(pred[None], (mask == 1)[None], (mask == 0)[None])
    return {
        "value": threshold.value,
        "train_f1": threshold.train_score,
        "test_f1": class1.result()["f1"],
        "test_metrics": task.score(thresholded, masks, 2),
    }


def _overlay(task: DenseTask, test: list[Scene], preds: list[np.ndarray], window: int, count: int):
    """Up to `count` window-sized tiles of the test scenes, those with the most changed pixels
    (change detection: both dates shown) or the most labelled pixels (segmentation), titled by
    scene id and position."""
    change = isinstance(task, ChangeDetection)
    tiles = []
    for scene, pred in zip(test, preds):
        rgbs = [
            plots.display_rgb(scene.raw[k], _rgb_indices(scene.specs[k]))
            for k in (task.keys if change else task.keys[-1:])
        ]
        h, w = scene.mask.shape
        size = min(window, h, w)
        for y in tiling.starts(h, size, size):
            for x in tiling.starts(w, size, size):
                box = (slice(y, y + size), slice(x, x + size))
                mask = scene.mask[box]
                weight = int((mask == 1).sum() if change else (mask >= 0).sum())
                row, col = scene.origin[0] + y, scene.origin[1] + x
                title = f"{scene.id}\nrows {row}-{row + size}, cols {col}-{col + size}"
                tiles.append((weight, [rgb[box] for rgb in rgbs], mask, pred[box], title))
    tiles = sorted(tiles, key=lambda t: -t[0])[:count]
    if not tiles or len({t[2].shape for t in tiles}) > 1:
        return None
    overlay = {
        "images": np.stack([t[1][-1] for t in tiles]),
        "truth": np.stack([t[2] for t in tiles]),
        "pred": np.stack([t[3] for t in tiles]).astype(np.int64),
        "titles": [t[4] for t in tiles],
        "max_items": len(tiles),
    }
    if change:
        overlay["before"] = np.stack([t[1][0] for t in tiles])
    return overlay
