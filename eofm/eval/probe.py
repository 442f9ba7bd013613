"""Frozen-feature classification probes (kNN, linear) with a report.

Protocol: a stratified split (seeded) of the labelled source; per-band statistics from the train
part only; images normalised with the encoder's pretraining method (`normalization`, reported) and
resized to its native input size (bilinear); pooled features of the frozen encoder; kNN, or a
logistic-regression probe whose weight decay is chosen on a validation part of the train split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from eofm.data import augment, datasets, normalize, stats
from eofm.data.spec import valid_key
from eofm.eval import encoders, knn, linear, metrics


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with `test_fraction` of every class in test (at least one)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


def extract_features(
    features,
    source,
    key: str,
    indices: np.ndarray,
    norm: normalize.Normalize,
    size: int,
    batch_size: int,
) -> np.ndarray:
    """Pooled `features` [N, D] of `source[indices][key]`, normalised and resized to `size`."""
    out = []
    for start in range(0, len(indices), batch_size):
        images = []
        for i in indices[start : start + batch_size]:
            x = norm.map(source[int(i)])[key]
            images.append(augment.crop_resize(x, (0.0, 0.0, 1.0, 1.0), (size, size), nearest=False))
        out.append(np.asarray(features(np.stack(images))))
    return np.concatenate(out)


def run_probe(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs the probe of `config` ("knn" or "linear") and writes WORKDIR/report.{json,md}."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.probe not in ("knn", "linear"):
        raise ValueError(f"unknown probe {config.probe!r}; expected 'knn' or 'linear'")
    start = time.perf_counter()
    source = datasets.make_source(config.data.source, **config.data.source_args)
    key = config.data.key
    spec = source.specs[key]
    labels = np.asarray([int(source[i]["label"]) for i in range(len(source))])
    train, test = stratified_split(labels, config.test_fraction, config.seed)
    encoder = encoders.load_encoder(config.encoder)
    features = encoder.features(spec)
    band_stats = {
        key: {
            "sensor": spec.sensor,
            "bands": list(spec.bands),
            "stats": stats.compute_band_stats(
                ((source[int(i)][key], source[int(i)][valid_key(key)]) for i in train), spec.bands
            ),
        }
    }
    method = config.data.normalization or encoder.normalization
    norm = normalize.Normalize({key: spec}, method, band_stats)
    size, batch = encoder.image_size, config.batch_size
    feats_train = extract_features(features, source, key, train, norm, size, batch)
    feats_test = extract_features(features, source, key, test, norm, size, batch)
    num_classes = len(source.label_names["label"])
    if config.probe == "knn":
        pred, _ = knn.knn_predict(
            feats_train,
            labels[train],
            feats_test,
            num_classes=num_classes,
            k=config.knn.k,
            metric=config.knn.metric,
            temperature=config.knn.temperature or None,
        )
        settings = config.knn.to_dict()
    else:
        fit_i, val_i = stratified_split(labels[train], config.linear.val_fraction, config.seed + 1)
        fit = linear.fit_linear_probe(
            feats_train[fit_i],
            labels[train][fit_i],
            feats_train[val_i],
            labels[train][val_i],
            num_outputs=num_classes,
            steps=config.linear.steps,
        )
        pred = fit.logits(feats_test).argmax(1)
        settings = {
            "weight_decay": fit.weight_decay,
            "steps": config.linear.steps,
            "validation_accuracy": fit.validation_scores,
        }
    result = metrics.multiclass_metrics(pred, labels[test], num_classes)
    report = {
        "task": f"{config.probe}_classification",
        "encoder": {
            "ref": config.encoder,
            "model": encoder.name,
            "variant": encoder.variant,
            "checkpoint_step": encoder.step,
            "zero_filled_bands": encoder.adapt(spec).missing_bands,
        },
        "data": {
            "source": config.data.source,
            "sensor": spec.sensor,
            "bands": list(spec.bands),
            "train": len(train),
            "test": len(test),
            "normalization": method,
            "resize_to": encoder.image_size,
            "interpolation": "bilinear",
        },
        config.probe: settings,
        "metrics": {"oa": result["oa"], "balanced_accuracy": result["balanced_accuracy"]},
        "confusion": result["confusion"],
        "seconds": time.perf_counter() - start,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    (workdir / "report.md").write_text(
        f"| encoder | step | data | normalisation | size | probe | OA | balanced acc |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {encoder.name}:{encoder.variant} | {encoder.step} | {config.data.source}"
        f" ({len(train)}/{len(test)}) | {method} | {encoder.image_size} | {config.probe} |"
        f" {result['oa']:.3f} | {result['balanced_accuracy']:.3f} |\n"
    )
    return report
