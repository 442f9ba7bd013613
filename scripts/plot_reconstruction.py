r"""PNG of input / masked input / reconstruction for a few samples, from a run's newest checkpoint.

  python scripts/plot_reconstruction.py --config=configs/pretrain/mae.py:tiny \
      --workdir=workdirs/demo [--out=workdirs/demo/reconstruction.png --num=4]

Pass the same --config (and overrides) as the run. Shows a colour composite of the normalised
input (Sentinel-2 true colour B04/B03/B02, or MODIS bands 7-2-1), the patches the encoder saw, and
the model's prediction with the visible patches pasted back, plus Sentinel-1 VV when the run used
S1. Invalid pixels (fill, nodata) are left blank in the input columns: they were never targets.
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from eofm import logs  # noqa: E402
from eofm.data import pipeline  # noqa: E402
from eofm.data.spec import valid_key  # noqa: E402
from eofm.train import loop, pretrain  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of the run.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "PNG path (default WORKDIR/reconstruction.png).")
_NUM = flags.DEFINE_integer("num", 4, "Samples to show.")


# Colour composites by band name, the first one the model's stacked input has is shown.
COMPOSITES = (("B04", "B03", "B02"), ("b07", "b02", "b01"))


def _channels(bands, wanted):
    """Indices of the `wanted` band names in the model's stacked input (`model.bands`), or None
    if one is absent."""
    idx = [bands.index(w) if w in bands else None for w in wanted]
    return None if None in idx else idx


def main(argv):
    del argv
    logs.configure_from_flags()
    config = _CONFIG.value
    workload = pretrain.workload(config, _WORKDIR.value)
    step, model = loop.restore_model(config, _WORKDIR.value, workload)
    batch = next(pipeline.make_iterator(workload.make_dataset(0, 1)))
    images = np.asarray(model.stack(batch))
    valid = np.ones_like(images)
    if all(valid_key(k) in batch for k in model.inputs):
        valid = model.stack({k: np.asarray(batch[valid_key(k)], np.float32) for k in model.inputs})
    # The samples with the most valid pixels (of the bands present at all).
    shown = np.argsort(-np.asarray(valid).mean(axis=(1, 2, 3)), kind="stable")[: _NUM.value]
    images, valid = images[shown], np.asarray(valid)[shown]
    recon, mask = model.reconstruct(images, jax.random.key(config.seed))
    recon, mask = np.asarray(recon), np.asarray(mask)[..., None]
    pasted = np.where(mask > 0, recon, images)
    # Absent bands and invalid pixels (fill) were never targets: blank in every column.
    images, pasted = (np.where(valid > 0, x, np.nan) for x in (images, pasted))

    bands = list(model.bands)
    rgb = next(filter(None, (_channels(bands, c) for c in COMPOSITES)), [0, 0, 0])
    vv = _channels(bands, ["VV"])
    visible = np.where(mask > 0, np.nan, images)  # masked patches show as blank
    columns = [
        ("input", images, rgb),
        ("visible to the encoder", visible, rgb),
        ("reconstruction", pasted, rgb),
    ]
    if vv is not None:
        columns += [("S1 VV input", images, vv), ("S1 VV reconstruction", pasted, vv)]
    fig, axes = plt.subplots(
        len(images), len(columns), squeeze=False, figsize=(2.2 * len(columns), 2.2 * len(images))
    )
    for i in range(len(images)):
        for ax, (title, x, idx) in zip(axes[i], columns):
            lo, hi = np.nanpercentile(images[i][..., idx], (2, 98))  # one stretch per row
            shown = np.clip((x[i][..., idx] - lo) / (hi - lo + 1e-6), 0, 1)
            ax.imshow(
                shown[..., 0] if len(idx) == 1 else shown, cmap="gray" if len(idx) == 1 else None
            )
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{config.model_name}:{config.variant} at step {step}", fontsize=9)
    fig.tight_layout()
    out = _OUT.value or str(Path(_WORKDIR.value) / "reconstruction.png")
    fig.savefig(out, dpi=90)
    print(f"wrote {out} (step {step})")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
