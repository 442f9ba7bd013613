"""Scene classification with an encoder: kNN, linear probe or finetuning; single- or multi-label;
clean and REOBench-style corrupted test sets.

Protocol:
- Split: the source's own splits (`data.train_splits`, `data.test_split`), or a seeded split
  (stratified by class for single-label data) with `test_fraction` in test.
- Per-band statistics come from the train part only. Images are normalised with the encoder's
  pretraining method (or `data.normalization`) and resized (bilinear) to its native input size;
  both are reported.
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from eofm.data import augment, datasets, normalize, pipeline, stats
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import corruptions, encoders, heads, knn, linear, metrics, report
from eofm.eval import fit as fit_lib

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


def load_splits(config: ml_collections.ConfigDict):
    """(train, test LabelledImages, spec, class names, split description) of `config.data`."""
    d = config.data

    def source(split=None):
        kwargs = dict(d.source_args)
        if split is not None:
            kwargs["split"] = split
        src = datasets.make_source(d.source, **kwargs)
        if d.key not in src.specs:
            raise ValueError(f"source {d.source!r} has images {sorted(src.specs)}, not {d.key!r}")
        return src

    if d.test_split:
        train_sources = [source(s) for s in d.train_splits]
        test_source = source(d.test_split)
        train = _gather([s[i] for s in train_sources for i in range(len(s))], d.key)
        test = _gather([test_source[i] for i in range(len(test_source))], d.key)
        described = f"train {'+'.join(d.train_splits)}, test {d.test_split}"
        spec, names = test_source.specs[d.key], test_source.label_names["label"]
    else:
        src = source()
        data = _gather([src[i] for i in range(len(src))], d.key)
        tr, te = stratified_split(data.labels, config.test_fraction, config.seed)
        take = lambda idx: LabelledImages(data.images[idx], data.valid[idx], data.labels[idx])
        train, test = take(tr), take(te)
        described = f"seeded split, {config.test_fraction:.3g} of each class in test"
        spec, names = src.specs[d.key], src.label_names["label"]
    return train, test, spec, list(names), described


class Preprocess:
    """Raw images -> the encoder's input: normalised with train statistics, resized."""

    def __init__(self, key: str, spec: SensorSpec, train: LabelledImages, method: str, size: int):
        self.key, self.size = key, size
        band_stats = stats.compute_band_stats(zip(train.images, train.valid), spec.bands)
        self.norm = normalize.Normalize.of_band_stats(key, spec, method, band_stats)
        # Per-band value range of the corruptions: the train split's min and max.
        self.lo, self.hi = corruptions.band_range(band_stats, spec.bands)

    def __call__(self, images: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[B, H, W, C] raw -> f32[B, S, S, C]."""
        box, out = (0.0, 0.0, 1.0, 1.0), (self.size, self.size)
        return np.stack(
            [
                augment.crop_resize(
                    self.norm.map({self.key: x, valid_key(self.key): v})[self.key],
                    box,
                    out,
                    nearest=False,
                )
                for x, v in zip(images, valid)
            ]
        )


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
    fit_i, val_i = stratified_split(train.labels, config.linear.val_fraction, config.seed + 1)
    probe = linear.fit_linear_probe(
        feats[fit_i],
        train.labels[fit_i],
        feats[val_i],
        train.labels[val_i],
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
    return featurize, (lambda features: np.asarray(post(probe.logits(features)))), settings


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


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs the classification evaluation of `config`; writes WORKDIR/report.{json,md} + plots."""
    if config.method not in METHODS:
        raise ValueError(f"unknown classification method {config.method!r}; expected {METHODS}")
    start = time.perf_counter()
    workdir = report.prepare_workdir(workdir, config.encoder)
    train, test, spec, class_names, split = load_splits(config)
    multilabel = train.labels.ndim == 2
    encoder = encoders.load_encoder(config.encoder)
    # An encoder that reads none of the data's bands stops here, before any compute.
    missing_bands = encoder.zero_filled_bands([(config.data.key, spec)])
    method = config.data.normalization or encoder.normalization
    prep = Preprocess(config.data.key, spec, train, method, encoder.image_size)
    featurize, classify, settings = _fit_classifier(
        config, workdir, encoder, spec, train, prep, len(class_names), multilabel
    )

    def test_scores(corruption=None):
        stream = batches(test, prep, config.batch_size, corruption, config.seed)
        return classify(_concat(featurize, stream))

    scores = test_scores()
    clean = _metric_of(scores, test.labels, multilabel)
    headline = "map_macro" if multilabel else "oa"
    clean[f"{headline}_ci95"] = list(
        metrics.bootstrap_interval(
            lambda idx: _metric_of(scores[idx], test.labels[idx], multilabel)[headline],
            len(scores),
            seed=config.seed,
        )
    )
    result = {
        "task": "multilabel_classification" if multilabel else "classification",
        "method": config.method,
        "encoder": report.encoder_card(encoder, missing_bands),
        "data": {
            "source": config.data.source,
            "sensor": spec.sensor,
            "bands": list(spec.bands),
            "split": split,
            "train": len(train.images),
            "test": len(test.images),
            "normalization": method,
            "resize_to": encoder.image_size,
            "interpolation": "bilinear",
            "classes": class_names,
        },
        config.method: settings,
        "metrics": {k: v for k, v in clean.items() if k not in ("confusion", "per_class_recall")},
        "headline_metric": headline,
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
