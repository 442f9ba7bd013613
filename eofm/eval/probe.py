"""Frozen-feature classification probes (kNN) with a report.

Protocol: a stratified split (seeded) of the labelled source; per-band statistics from the train
part only; images normalised with the encoder's pretraining method (`normalization`, reported) and
resized to its native input size (bilinear); pooled features of the frozen encoder; kNN.
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
from eofm.eval import encoders, knn, metrics


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
    encoder: encoders.FrozenEncoder,
    source,
    key: str,
    indices: np.ndarray,
    norm: normalize.Normalize,
    batch_size: int,
) -> np.ndarray:
    """Pooled features [N, D] of `source[indices][key]`, normalised and resized."""
    size = encoder.image_size
    out = []
    for start in range(0, len(indices), batch_size):
        images = []
        for i in indices[start : start + batch_size]:
            x = norm.map(source[int(i)])[key]
            images.append(augment.crop_resize(x, (0.0, 0.0, 1.0, 1.0), (size, size), nearest=False))
        out.append(np.asarray(encoder.features(np.stack(images))))
    return np.concatenate(out)


def run_knn(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs the kNN probe of `config` and writes WORKDIR/report.{json,md}."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = datasets.make_source(config.data.source, **config.data.source_args)
    key = config.data.key
    spec = source.specs[key]
    labels = np.asarray([int(source[i]["label"]) for i in range(len(source))])
    train, test = stratified_split(labels, config.test_fraction, config.seed)
    encoder = encoders.load_encoder(config.encoder, key, spec)
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
    feats_train = extract_features(encoder, source, key, train, norm, config.batch_size)
    feats_test = extract_features(encoder, source, key, test, norm, config.batch_size)
    num_classes = len(source.label_names["label"])
    pred, _ = knn.knn_predict(
        feats_train,
        labels[train],
        feats_test,
        num_classes=num_classes,
        k=config.knn.k,
        metric=config.knn.metric,
        temperature=config.knn.temperature or None,
    )
    result = metrics.multiclass_metrics(pred, labels[test], num_classes)
    report = {
        "task": "knn_classification",
        "encoder": {
            "ref": config.encoder,
            "model": encoder.name,
            "variant": encoder.variant,
            "checkpoint_step": encoder.step,
            "zero_filled_bands": encoder.missing_bands,
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
        "knn": config.knn.to_dict(),
        "metrics": {"oa": result["oa"], "balanced_accuracy": result["balanced_accuracy"]},
        "confusion": result["confusion"],
        "seconds": time.perf_counter() - start,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    (workdir / "report.md").write_text(
        f"| encoder | step | data | normalisation | size | k | metric | OA | balanced acc |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {encoder.name}:{encoder.variant} | {encoder.step} | {config.data.source}"
        f" ({len(train)}/{len(test)}) | {method} | {encoder.image_size} | {config.knn.k} |"
        f" {config.knn.metric} | {result['oa']:.3f} | {result['balanced_accuracy']:.3f} |\n"
    )
    return report
