"""PNG figures of evaluation results: robustness curves, confusion matrices, segmentation overlays.

Figures are built as `matplotlib.figure.Figure` objects drawn by the Agg canvas, so nothing here
touches pyplot's global state or the session's backend, and no figure outlives its function. Every
plotting function writes a PNG at `path` (creating its parent folders) and returns it as a Path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from eofm.eval import corruptions

# Fixed qualitative class colours (RGB in [0, 1]), 60 in all: the 10 distinct tab10 hues first,
# then their light variants from tab20, then tab20b and tab20c.
_CLASS_COLOURS = np.concatenate(
    [
        np.asarray(matplotlib.colormaps["tab10"].colors)[:, :3],
        np.asarray(matplotlib.colormaps["tab20"].colors)[1::2, :3],
        np.asarray(matplotlib.colormaps["tab20b"].colors)[:, :3],
        np.asarray(matplotlib.colormaps["tab20c"].colors)[:, :3],
    ]
)
_IGNORED = np.array([0.8, 0.8, 0.8])  # Light grey.
_CORRECT = np.array([0.30, 0.69, 0.29])  # Green.
_WRONG = np.array([0.89, 0.10, 0.11])  # Red.
_DPI = 120


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Writes fig as a PNG at path (parents created) and returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def robustness_curves(summary: dict, metric: str, path: str | os.PathLike) -> Path:
    """Metric vs severity (1..5), one line per corruption, from a `robustness.summarize` dict.

    Geometric corruptions (rotate, scale, translate) are dashed with square markers, the others
    solid with round ones; the clean metric is a black dashed horizontal line.
    """
    cells = summary["cells"]
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for i, (corruption, by_severity) in enumerate(cells.items()):
        severities = sorted(int(s) for s in by_severity)
        geometric = corruption in corruptions.GEOMETRIC
        ax.plot(
            severities,
            [by_severity[str(s)] for s in severities],
            color=_CLASS_COLOURS[i % len(_CLASS_COLOURS)],
            linestyle=(0, (5, 2)) if geometric else "-",
            marker="s" if geometric else "o",
            markersize=4,
            label=corruption,
        )
    ax.axhline(summary["clean"], color="black", linestyle="--", linewidth=1.2, label="clean")
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.set_xlim(0.8, 5.2)
    ax.set_xlabel("severity")
    ax.set_ylabel(metric)
    rel = summary.get("rel_drop")
    drop = f"drop {summary['abs_drop']:.3f}" + ("" if rel is None else f" ({100 * rel:.1f}%)")
    ax.set_title(
        f"{metric}: clean {summary['clean']:.3f}, mean corrupted "
        f"{summary['mean_corrupted']:.3f}, {drop}",
        fontsize="medium",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _save(fig, path)


def confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
) -> Path:
    """Heatmap of a [K, K] count matrix (rows = true, cols = predicted) as row-normalised rates.

    Cells show the rate (normalize=True) or the count; rows with no samples are blank. The title
    gives the overall accuracy, trace / total.
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [K, K] matrix, got shape {cm.shape}")
    k = cm.shape[0]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} confusion matrix")
    if not np.isfinite(cm).all() or (cm < 0).any():
        raise ValueError("cm must hold finite, non-negative counts")
    total = cm.sum()
    if total == 0:
        raise ValueError("cm is all zeros: no samples")
    row_sums = cm.sum(axis=1, keepdims=True)
    rates = np.full_like(cm, np.nan)
    np.divide(cm, row_sums, out=rates, where=row_sums > 0)

    side = max(4.0, 0.45 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rate (row-normalised)")
    fontsize = max(4.0, min(9.0, 110.0 / k))
    integer_counts = np.array_equal(cm, np.round(cm))
    for (i, j), rate in np.ndenumerate(rates):
        if np.isnan(rate):
            continue
        text = (
            f"{rate:.2f}"
            if normalize
            else (f"{cm[i, j]:.0f}" if integer_counts else f"{cm[i, j]:.3g}")
        )
        colour = "white" if rate > 0.5 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    ticks = np.arange(k)
    ax.set_xticks(ticks, list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"OA = {100 * np.trace(cm) / total:.1f}% (n = {total:.0f})")
    return _save(fig, path)


def _check_labels(name: str, labels: np.ndarray, k: int, ignore_index: int | None) -> None:
    """ValueError unless every label is in [0, k) (or equals ignore_index)."""
    bad = (labels < 0) | (labels >= k)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        raise ValueError(f"{name} holds labels outside [0, {k}): {np.unique(labels[bad])[:5]}")


def overlays(
    images: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    ignore_index: int = -1,
    max_items: int = 4,
    before: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Grid of segmentation results: per item, image / reference / prediction / errors.

    images: [N, H, W, 3] display RGB in [0, 1] (see `display_rgb`); truth, pred: [N, H, W] class
    ids in [0, len(class_names)), truth may also hold ignore_index. Ignored reference pixels are
    grey; the error map shows correct (green), wrong (red) and ignored (grey) pixels. The first
    max_items items are drawn. before: optional [N, H, W, 3] RGB of a first date, drawn before
    `images` (then titled "after"); titles: optional N row labels (e.g. scene id and position).
    """
    images = np.asarray(images, np.float64)
    if before is not None and np.shape(before) != images.shape:
        raise ValueError(f"before {np.shape(before)} must have the shape of images {images.shape}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
    if truth.shape != images.shape[:3] or pred.shape != images.shape[:3]:
        raise ValueError(
            f"truth {truth.shape} and pred {pred.shape} must be [N, H, W] = {images.shape[:3]}"
        )
    if not (np.issubdtype(truth.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"truth and pred must be integer ids, got {truth.dtype} and {pred.dtype}")
    k = len(class_names)
    if not 0 < k <= len(_CLASS_COLOURS):
        raise ValueError(f"overlays draws 1 to {len(_CLASS_COLOURS)} classes, got {k}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    _check_labels("truth", truth, k, ignore_index)
    _check_labels("pred", pred, k, None)
    n = min(len(images), max_items)
    if n == 0:
        raise ValueError("images is empty")

    colours = _CLASS_COLOURS[:k]
    legend_rows = -(-k // 5)
    columns = ("image", "reference", "prediction", "errors")
    if before is not None:
        columns = ("before", "after", *columns[1:])
    fig = Figure(
        figsize=(len(columns) * 2.4, n * 2.4 + 0.6 + 0.25 * legend_rows), layout="constrained"
    )
    axes = fig.subplots(n, len(columns), squeeze=False)
    for row in range(n):
        ignored = truth[row] == ignore_index
        reference = colours[np.where(ignored, 0, truth[row])]
        reference[ignored] = _IGNORED
        errors = np.where((truth[row] == pred[row])[..., None], _CORRECT, _WRONG)
        errors[ignored] = _IGNORED
        dates = (images[row],) if before is None else (before[row], images[row])
        rgb = tuple(np.nan_to_num(np.asarray(d, np.float64)).clip(0, 1) for d in dates)
        panels = (*rgb, reference, colours[pred[row]], errors)
        for ax, panel, title in zip(axes[row], panels, columns, strict=True):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize="medium")
        if titles is not None:
            axes[row][0].set_ylabel(titles[row], fontsize="small")
    classes = [Patch(color=c, label=name) for c, name in zip(colours, class_names, strict=True)]
    outcomes = [
        Patch(color=_CORRECT, label="correct"),
        Patch(color=_WRONG, label="wrong"),
        Patch(color=_IGNORED, label="ignored"),
    ]
    for handles, title, loc in ((classes, "classes", "left"), (outcomes, "errors", "right")):
        fig.legend(
            handles=handles,
            title=title,
            loc=f"outside lower {loc}",
            ncol=min(len(handles), 5 if loc == "left" else 3),
            fontsize="small",
            title_fontsize="small",
            frameon=False,
        )
    return _save(fig, path)


def display_rgb(
    image: np.ndarray,
    rgb_indices: Sequence[int],
    *,
    percentiles: tuple[float, float] = (2, 98),
) -> np.ndarray:
    """[H, W, 3] float32 display RGB in [0, 1] from 3 bands of an [H, W, C] image.

    Each band is stretched linearly between its own low and high percentiles of the finite values
    and clipped. Non-finite pixels, all-NaN bands and constant bands come out as 0.
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    channels = image.shape[-1]
    if len(rgb_indices) != 3 or not all(-channels <= i < channels for i in rgb_indices):
        raise ValueError(
            f"rgb_indices must be 3 band indices into {channels} bands, got {rgb_indices}"
        )
    lo_pct, hi_pct = percentiles
    if not 0 <= lo_pct < hi_pct <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    out = np.zeros((*image.shape[:2], 3), np.float32)
    for c, index in enumerate(rgb_indices):
        band = image[..., index]
        finite = np.isfinite(band)
        if not finite.any():
            continue
        lo, hi = np.percentile(band[finite], [lo_pct, hi_pct])
        if hi > lo:
            stretched = (np.where(finite, band, lo) - lo) / (hi - lo)
            out[..., c] = stretched.clip(0.0, 1.0)
    return out
