"""Scene classification with an encoder: kNN, linear probe or finetuning; single- or multi-label;
clean and REOBench-style corrupted test sets.

Protocol:
- Split: separate folders (`data.train_root`, `data.test_root`, each optionally restricted to the
  source's splits `data.train_splits` / `data.test_split`), the source's own splits of one folder
  (`data.train_splits`, `data.test_split`), or a seeded split of one folder (stratified by class
  for single-label data) with `test_fraction` in test. The report gives the split in words and
  the files each part read (`eofm.eval.provenance`).
- Per-band statistics come from the train part only. Images are normalised with the encoder's
  pretraining method (or `data.normalization`) and resized (bilinear) to its native input size;
  both are reported.
- Baselines on the same split (`eofm.eval.baselines`): the majority answer and the `linear` probe
  on per-band image statistics; the report flags an encoder below either. The encoder
  `baseline:image_stats` evaluates those statistics themselves with knn or linear.
- `knn` and `linear` use frozen pooled features; `finetune` trains a LayerNorm + linear head
  (random flips and 90-degree rotations), on the frozen encoder or (finetune.finetune=True) with
  the whole encoder, under layer-wise lr decay. Training images are held in memory.
- Multi-label data (multi-hot labels) report mAP (macro, micro) and F1 (micro, macro) at 0.5;
  single-label data OA and balanced accuracy. The headline metric (map_macro or oa) comes with a
  95 % percentile-bootstrap interval over test examples (500 resamples): small test sets are noisy.
- Robustness: every corruption x severity of `robustness` is applied to the raw test images
  (bands mapped to [0, 1] by the train split's per-band min and max, see
  `corruptions.corrupt_scaled`), which are then normalised and resized as the clean ones. The
  per-example key is fold_in(fold_in(seed, corruption), index): reruns see the same corruptions.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from eofm.data import augment, datasets, normalize, pipeline, stats
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import (
    baselines,
    corruptions,
    encoders,
    heads,
    knn,
    linear,
    metrics,
    provenance,
    report,
)
from eofm.eval import fit as fit_lib
from eofm.train import validate

METHODS = ("knn", "linear", "finetune")


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with `test_fraction` of every class in test (at least one).
    Multi-hot labels [N, K] get a plain seeded random split."""
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        idx = rng.permutation(len(labels))
        n = max(1, round(len(idx) * test_fraction))
        return np.sort(idx[n:]), np.sort(idx[:n])
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = max(1, round(len(idx) * test_fraction))
        test.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


@dataclasses.dataclass
class LabelledImages:
    """Raw images of one split: [N, H, W, C] f32 in the source's units, validity, labels."""

    images: np.ndarray
    valid: np.ndarray
    labels: np.ndarray  # int [N] or multi-hot f32 [N, K]


def _gather(items: list[dict], key: str) -> LabelledImages:
    shapes = {it[key].shape for it in items}
    if len(shapes) > 1:
        raise ValueError(f"{key!r} images differ in size ({sorted(shapes)}); resize them first")
    return LabelledImages(
        np.stack([it[key] for it in items]).astype(np.float32),
        np.stack([it[valid_key(key)] for it in items]),
        np.stack([np.asarray(it["label"]) for it in items]),
    )


@dataclasses.dataclass
class Splits:
    """The train and test images of an evaluation and where they came from.

    Attributes:
      description: the split in words, with counts.
      sources: {"train": source, "test": source}, or {"train+test": source} for a seeded split of
        one source: what `provenance.describe` reads.
      roots: the same keys -> the absolute root each part was read from (None: the source's
        default).
    """

    train: LabelledImages
    test: LabelledImages
    spec: SensorSpec
    class_names: list[str]
    description: str
    sources: dict[str, Any]
    roots: dict[str, str | None]


@dataclasses.dataclass
class _Together:
    """Several sources read as one by `provenance.describe`: the union of their files."""

    sources: list[Any]

    def reads_from(self) -> dict[str, list[str]]:
        files = dict.fromkeys(f for s in self.sources for f in provenance.files_read(s))
        return {"files": list(files)}


def _source(d: ml_collections.ConfigDict, root: str | None, split: str | None, key: str):
    """The source of `d` at `root` (None: source_args' own), restricted to `split`. `key` names the
    config key that chose this part, for the error when it holds no example."""
    kwargs = dict(d.source_args)
    if root:
        kwargs["root"] = root
    if split:
        kwargs["split"] = split
    where = kwargs.get("root", "its default root")
    try:
        src = datasets.make_source(d.source, **kwargs)
    except ValueError as e:  # e.g. a split the data lack
        raise validate.ConfigError(f"config key {key} = {split or where!r}: {e}") from e
    if d.key not in src.specs:
        raise ValueError(f"source {d.source!r} has images {sorted(src.specs)}, not {d.key!r}")
    if len(src) == 0:
        raise validate.ConfigError(
            f"config key {key} = {split or where!r}: source {d.source!r} has no example"
            + (f" in split {split!r} under {where}" if split else f" under {where}")
        )
    return src


def _images(sources: Sequence[Any], key: str) -> LabelledImages:
    return _gather([s[i] for s in sources for i in range(len(s))], key)


def _absolute(root: str | None) -> str | None:
    return None if root is None else os.path.abspath(root)


def _fraction(x: float) -> str:
    """1/3 for 0.333..., 3/10 for 0.3."""
    return str(fractions.Fraction(x).limit_denominator(100))


def _seeded_split(config: ml_collections.ConfigDict) -> Splits:
    d = config.data
    src = _source(
        d, d.train_root, None, "data.train_root" if d.train_root else "data.source_args.root"
    )
    data = _images([src], d.key)
    tr, te = stratified_split(data.labels, config.test_fraction, config.seed)
    take = lambda idx: LabelledImages(data.images[idx], data.valid[idx], data.labels[idx])
    how = (
        f"random split of one source, {_fraction(config.test_fraction)} in test"
        if data.labels.ndim == 2
        else f"stratified split of one source, {_fraction(config.test_fraction)} of each class"
        " in test"
    )
    return Splits(
        take(tr),
        take(te),
        src.specs[d.key],
        list(src.label_names["label"]),
        f"seeded {how} ({len(te)} of {len(data.labels)} images)",
        {"train+test": src},
        {"train+test": _absolute(d.train_root or d.source_args.get("root"))},
    )


def _part(splits: Sequence[str], count: int, whose: str = "the") -> str:
    """E.g. "the source's 'train' and 'validation' splits (16 examples)", "all 72 examples"."""
    if not splits:
        return f"all {count} examples"
    plural = "s" if len(splits) > 1 else ""
    return f"{whose} {' and '.join(map(repr, splits))} split{plural} ({count} examples)"


def _check_same_classes(train_sources: Sequence[Any], test_source: Any) -> None:
    """Label indices mean the same class in every part, or a ConfigError names both lists (e.g.
    separate folders that do not hold the same classes: give `classes` in source_args)."""
    test_names = list(test_source.label_names["label"])
    for source in train_sources:
        names = list(source.label_names["label"])
        if names != test_names:
            raise validate.ConfigError(
                f"config key data.source_args.classes: the training data's classes {names} differ"
                f" from the test data's {test_names}; list the classes in one order with"
                " --config.data.source_args.classes"
            )


def load_splits(config: ml_collections.ConfigDict) -> Splits:
    """The train and test parts of `config.data` (module docstring, "Split")."""
    d = config.data
    if not d.test_root and not d.test_split:
        return _seeded_split(config)
    if not d.test_root and not d.train_splits:
        raise validate.ConfigError(
            f"config key data.test_split = {d.test_split!r}: needs data.train_splits (the"
            " source's splits to train on) or data.test_root"
        )
    train_root = d.train_root or d.source_args.get("root")
    test_root = d.test_root or train_root
    train_key = "data.train_splits" if d.train_splits else "data.train_root"
    train_sources = [_source(d, train_root, s, train_key) for s in d.train_splits or [None]]
    test_key = "data.test_split" if d.test_split else "data.test_root"
    test_source = _source(d, test_root, d.test_split, test_key)
    _check_same_classes(train_sources, test_source)
    train, test = _images(train_sources, d.key), _images([test_source], d.key)
    test_splits = [d.test_split] if d.test_split else []
    if d.test_root:
        description = (
            f"train: {_part(d.train_splits, len(train.labels))} under {train_root}; test:"
            f" {_part(test_splits, len(test.labels))} under {test_root}"
        )
    else:
        source_s = "the source's"
        description = (
            f"train: {_part(d.train_splits, len(train.labels), source_s)};"
            f" test: {_part(test_splits, len(test.labels), 'its')}"
        )
    return Splits(
        train,
        test,
        test_source.specs[d.key],
        list(test_source.label_names["label"]),
        description,
        {"train": _Together(train_sources), "test": test_source},
        {"train": _absolute(train_root), "test": _absolute(test_root)},
    )


class Preprocess:
    """Raw images -> the encoder's input: normalised with train statistics (method
    `baselines.RAW`: left raw, invalid pixels NaN), resized unless already at the size."""

    def __init__(self, key: str, spec: SensorSpec, train: LabelledImages, method: str, size: int):
        self.key, self.size = key, size
        band_stats = stats.compute_band_stats(zip(train.images, train.valid), spec.bands)
        self.norm = (
            None
            if method == baselines.RAW
            else normalize.Normalize.of_band_stats(key, spec, method, band_stats)
        )
        # Per-band value range of the corruptions: the train split's min and max.
        self.lo, self.hi = corruptions.band_range(band_stats, spec.bands)

    def _normalized(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.norm is None:
            return np.where(valid, image, np.nan).astype(np.float32)
        return self.norm.map({self.key: image, valid_key(self.key): valid})[self.key]

    def _resized(self, image: np.ndarray) -> np.ndarray:
        out = (self.size, self.size)
        if image.shape[:2] == out:
            return image
        return augment.crop_resize(image, (0.0, 0.0, 1.0, 1.0), out, nearest=False)

    def __call__(self, images: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[B, H, W, C] raw -> f32[B, S, S, C]."""
        return np.stack([self._resized(self._normalized(x, v)) for x, v in zip(images, valid)])


def batches(
    data: LabelledImages,
    prep: Preprocess,
    batch_size: int,
    corruption: tuple[str, int] | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Encoder-ready batches of `data`, optionally corrupted by (name, severity)."""
    base = jax.random.key(seed)
    for start in range(0, len(data.images), batch_size):
        images = data.images[start : start + batch_size]
        valid = data.valid[start : start + batch_size]
        if corruption is not None:
            name, severity = corruption
            ckey = jax.random.fold_in(base, corruptions.CORRUPTIONS.index(name))
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
                ckey, jnp.arange(start, start + len(images))
            )
            out, moved = corruptions.corrupt_scaled(
                name, images, severity, keys, prep.lo, prep.hi, {"valid": valid}
            )
            images, valid = np.asarray(out), np.asarray(moved["valid"])
        yield prep(images, valid)


def _concat(fn: Callable[[np.ndarray], Any], stream: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x)) for x in stream])


def _metric_of(scores: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict[str, Any]:
    if multilabel:
        return metrics.multilabel_metrics(scores, labels)
    return metrics.multiclass_metrics(scores.argmax(1), labels, scores.shape[1])


def _headline(multilabel: bool) -> str:
    return "map_macro" if multilabel else "oa"


def _scored(scores: np.ndarray, labels: np.ndarray, multilabel: bool, seed: int) -> dict[str, Any]:
    """`_metric_of` test scores [N, K], with the 95 % bootstrap interval of the headline metric."""
    out = _metric_of(scores, labels, multilabel)
    headline = _headline(multilabel)
    out[f"{headline}_ci95"] = list(
        metrics.bootstrap_interval(
            lambda idx: _metric_of(scores[idx], labels[idx], multilabel)[headline],
            len(scores),
            seed=seed,
        )
    )
    return out


def _summary(scored: dict[str, Any]) -> dict[str, Any]:
    """The metrics of `_scored` without the per-class ones."""
    return {k: v for k, v in scored.items() if k not in ("confusion", "per_class_recall")}


def _linear_classifier(config, feats, labels, num_classes, multilabel):
    """The `linear` protocol on train features [N, D] and labels: -> (classify: features [M, D]
    -> scores [M, K], settings to report)."""
    fit_i, val_i = stratified_split(labels, config.linear.val_fraction, config.seed + 1)
    probe = linear.fit_linear_probe(
        feats[fit_i],
        labels[fit_i],
        feats[val_i],
        labels[val_i],
        num_outputs=num_classes,
        multilabel=multilabel,
        steps=config.linear.steps,
    )
    post = jax.nn.sigmoid if multilabel else (lambda z: z)
    settings = {
        "weight_decay": probe.weight_decay,
        "steps": config.linear.steps,
        "validation_scores": probe.validation_scores,
    }
    return (lambda features: np.asarray(post(probe.logits(features)))), settings


def score_baselines(config, train, test, num_classes, multilabel) -> dict[str, dict[str, Any]]:
    """{name: {"description", "metrics"}} of the baselines on the encoder's split."""
    majority = baselines.majority_scores(train.labels, len(test.labels), num_classes)
    classify, _ = _linear_classifier(
        config,
        baselines.image_statistics(train.images, train.valid),
        train.labels,
        num_classes,
        multilabel,
    )
    image_stats = classify(baselines.image_statistics(test.images, test.valid))
    scored = lambda scores: _summary(_scored(scores, test.labels, multilabel, config.seed))
    return {
        "majority": {"description": baselines.MAJORITY[multilabel], "metrics": scored(majority)},
        "image_stats probe": {
            "description": baselines.IMAGE_STATS_PROBE,
            "metrics": scored(image_stats),
        },
    }


def _fit_classifier(config, workdir, encoder, spec, train, prep, num_classes, multilabel):
    """-> (featurize: encoder-ready images [B, S, S, C] -> features [B, D],
    classify: features [N, D] -> scores [N, K], settings to report)."""
    if config.method == "finetune":
        return _finetune(config, workdir, encoder, spec, train, prep, num_classes, multilabel)
    featurize = encoder.pooled_fn(spec)
    feats = _concat(featurize, batches(train, prep, config.batch_size))
    if config.method == "knn":
        k = config.knn

        def classify(features):
            return knn.knn_predict(
                feats,
                train.labels,
                features,
                num_classes=num_classes,
                k=k.k,
                metric=k.metric,
                temperature=k.temperature or None,
            )[1]

        return featurize, classify, k.to_dict()
    classify, settings = _linear_classifier(config, feats, train.labels, num_classes, multilabel)
    return featurize, classify, settings


def _finetune(config, workdir, encoder, spec, train, prep, num_classes, multilabel):
    images = prep(train.images, train.valid)
    targets = train.labels.astype(np.float32 if multilabel else np.int32)
    examples = fit_lib.ArraySource({"image": images, "label": targets})
    flip_rotate = augment.RandomCropFlipRotate(("image",), size=encoder.image_size)
    batch_size = config.fit.batch_size

    def make_dataset(process_index: int, process_count: int):
        return pipeline.make_dataset(
            examples,
            batch_size=batch_size // process_count,
            seed=config.seed,
            transforms=[flip_rotate],
            process_index=process_index,
            process_count=process_count,
        )

    def loss_fn(model, head, batch):
        logits = head(model.features(batch["image"], spec)["pooled"])
        if multilabel:
            loss = optax.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {}

    width = encoder.shapes(spec)["pooled"]
    model, head, history = fit_lib.fit(
        config,
        workdir,
        encoder,
        name=f"classifier of {num_classes} classes on {spec.sensor}",
        make_head=lambda rngs: heads.ClassifierHead(width, num_classes, rngs=rngs),
        loss_fn=loss_fn,
        make_dataset=make_dataset,
        input_keys=("image", "label"),
    )
    post = jax.nn.sigmoid if multilabel else (lambda z: z)
    featurize = encoders.jit_with_modules(lambda m, x: m.features(x, spec)["pooled"], model)
    classify = encoders.jit_with_modules(lambda h, features: post(h(features)), head)
    settings = {**config.fit.to_dict(), "history": history}
    return featurize, lambda features: np.asarray(classify(features)), settings


def _load_encoder(ref: str, data: LabelledImages):
    """The encoder `ref`; `baseline:image_stats` reads the images at their native size."""
    if baselines.is_baseline(ref):
        return baselines.ImageStatsEncoder(image_size=data.images.shape[1])
    return encoders.load_encoder(ref)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs the classification evaluation of `config`; writes WORKDIR/report.{json,md} + plots."""
    if config.method not in METHODS:
        raise ValueError(f"unknown classification method {config.method!r}; expected {METHODS}")
    baselines.check_encoder(config.encoder, config.method)
    start = time.perf_counter()
    workdir = report.prepare_workdir(workdir, config.encoder)
    splits = load_splits(config)
    train, test, spec, class_names = splits.train, splits.test, splits.spec, splits.class_names
    multilabel = train.labels.ndim == 2
    encoder = _load_encoder(config.encoder, train)
    # An encoder that reads none of the data's bands stops here, before any compute.
    missing_bands = encoder.zero_filled_bands([(config.data.key, spec)])
    stand_ins = encoder.stand_in_bands([(config.data.key, spec)])
    method = config.data.normalization or encoder.normalization
    size = encoder.image_size
    prep = Preprocess(config.data.key, spec, train, method, size)
    featurize, classify, settings = _fit_classifier(
        config, workdir, encoder, spec, train, prep, len(class_names), multilabel
    )

    def test_scores(corruption=None):
        stream = batches(test, prep, config.batch_size, corruption, config.seed)
        return classify(_concat(featurize, stream))

    clean = _scored(test_scores(), test.labels, multilabel, config.seed)
    headline = _headline(multilabel)
    result = {
        "task": "multilabel_classification" if multilabel else "classification",
        "method": config.method,
        "encoder": report.encoder_card(encoder, missing_bands, stand_ins),
        "data": {
            "source": config.data.source,
            "sensor": spec.sensor,
            "bands": list(spec.bands),
            "split": splits.description,
            "train": len(train.images),
            "test": len(test.images),
            "roots": splits.roots,
            "provenance": provenance.describe(splits.sources),
            "normalization": method,
            "resize_to": size,
            "interpolation": "bilinear" if train.images.shape[1:3] != (size, size) else "none",
            "classes": class_names,
        },
        config.method: settings,
        "metrics": _summary(clean),
        "headline_metric": headline,
        "baselines": score_baselines(config, train, test, len(class_names), multilabel),
    }
    if not multilabel:
        result["confusion"] = clean["confusion"]
        result["per_class_recall"] = clean["per_class_recall"]
    result["robustness"] = report.robustness_sweep(
        config.robustness,
        lambda c: _metric_of(test_scores(c), test.labels, multilabel)[headline],
        clean[headline],
    )
    result["seconds"] = time.perf_counter() - start
    report.write(workdir, result, class_names=class_names)
    return result
