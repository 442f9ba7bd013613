"""The data layer end to end on the embedded BigEarthNet v2 S1+S2 sample (`make demo`).

  python scripts/demo_data.py --workdir=workdirs/demo

1. prepares the 24 vendored pairs as ArrayRecord shards + manifest + per-band statistics;
2. runs the training input pipeline on them (z-score for S2, percentile clip for S1, random crop,
   flips, rot90, batches of 8) with 2 worker processes;
3. prints the statistics and batch layout, and writes `batch.png`: S2 true colour, S2 false colour
   (B08/B04/B03), S1 VV and the validity mask of each sample, with its labels.
"""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from eofm import logs  # noqa: E402
from eofm.data import arrayrecord, augment, datasets, normalize, pipeline, stats  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Output directory.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "grain worker processes.")


def _stretch(rgb: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(rgb, (2, 98))
    return np.clip((rgb - lo) / (hi - lo + 1e-6), 0, 1)


def _plot(batch, source, path):
    bands = source.specs["s2"].bands
    rgb = [bands.index(b) for b in ("B04", "B03", "B02")]
    nir = [bands.index(b) for b in ("B08", "B04", "B03")]
    n = len(batch["s2"])
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.3 * n), squeeze=False)
    names = source.label_names["label"]
    for i in range(n):
        labels = "; ".join(names[j] for j in np.flatnonzero(batch["label"][i]))
        valid = batch["s2_valid"][i].all(-1)
        panels = [
            (_stretch(batch["s2"][i][..., rgb]), "S2 B04/B03/B02"),
            (_stretch(batch["s2"][i][..., nir]), "S2 B08/B04/B03"),
            (batch["s1"][i][..., 0], "S1 VV (p1-p99 clip)"),
            (valid, f"S2 valid ({valid.mean():.0%})"),
        ]
        for ax, (img, title) in zip(axes[i], panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(textwrap.fill(labels, 28), fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv):
    del argv
    logs.configure_from_flags()
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    shards = os.path.join(workdir, "bigearthnet_arrayrecord")
    manifest = arrayrecord.prepare(
        datasets.BigEarthNetSource(),
        shards,
        name="bigearthnet_s1s2",
        examples_per_shard=8,
        licence="CDLA-Permissive-1.0",
        citation=datasets.BIGEARTHNET_CITATION,
    )
    source = arrayrecord.ArrayRecordSource(shards)
    band_stats = stats.read_stats_json(source.stats_path)
    print(
        f"prepared {manifest['num_examples']} examples in {len(manifest['shards'])} shards"
        f" -> {shards}"
    )
    for key, entry in band_stats.items():
        print(f"{key} ({entry['sensor']}): band  mean  std  p1  p99")
        for band in entry["bands"]:
            s = entry["stats"][band]
            print(f"  {band:4s} {s['mean']:9.2f} {s['std']:9.2f} {s['p1']:9.2f} {s['p99']:9.2f}")

    transforms = [
        normalize.Normalize(source.specs, {"s2": "zscore", "s1": "percentile_clip"}, band_stats),
        augment.RandomCropFlipRotate(["s2", "s1"], size=96, scale=(0.5, 1.0)),
    ]
    ds = pipeline.make_dataset(
        source,
        batch_size=_BATCH.value,
        seed=0,
        transforms=transforms,
        process_index=0,
        process_count=1,
    )
    it = pipeline.make_iterator(ds, num_workers=_WORKERS.value)
    batch = next(it)
    state = it.get_state()
    it.close()
    for key, value in sorted(batch.items()):
        print(f"batch[{key!r}]: {value.dtype} {value.shape}")
    print(f"iterator state after one batch: {state}")
    png = os.path.join(workdir, "batch.png")
    _plot(batch, source, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    app.run(main)
