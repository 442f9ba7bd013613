"""One results report per evaluation run: report.json, report.md and PNG plots in the workdir.

An evaluation writes only in its own workdir (`prepare_workdir`, before any compute): never in the
encoder's run, which it only reads.

The JSON holds everything (encoder card, data card with the files read, settings, metrics,
baselines, robustness table); the Markdown gives the headline table, a flag when a trivial baseline
beats the encoder, the baselines, the data's provenance, the robustness table and the plots:
  confusion.png      single-label classification (row-normalised confusion matrix)
  robustness.png     metric against severity, one curve per corruption, clean as a dashed line
  overlays.png       dense tasks: image / reference / prediction / errors for a few tiles
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from eofm import files
from eofm.eval import corruptions, encoders, plots, provenance, robustness
from eofm.train import validate


def prepare_workdir(workdir: str | os.PathLike, encoder_ref: str) -> Path:
    """The evaluation's workdir, created and proven writable (an error names it), so that a bad
    one fails before any compute. One that is the encoder's run directory, or lies inside it, is
    refused: evaluation only reads that run."""
    workdir, run = Path(workdir), encoders.run_directory(encoder_ref)
    if run is not None and run.resolve() in (workdir.resolve(), *workdir.resolve().parents):
        raise ValueError(
            f"evaluation workdir {workdir} lies in the encoder's run {run}, which evaluation only"
            " reads; give a --workdir outside it"
        )
    validate.check_workdir(workdir)
    return workdir


def encoder_card(
    encoder: encoders.Encoder,
    missing_bands: dict[str, list[str]],
    stand_in_bands: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """What was evaluated: reference, family, variant, checkpoint step, input recipe, the
    definition of its features, `missing_bands` ({data key: bands zero-filled}, see
    `Encoder.zero_filled_bands`) and `stand_in_bands` ({data key: {pretraining band: data band
    matched by wavelength}}, see `Encoder.stand_in_bands`)."""
    return {
        "stand_in_bands": stand_in_bands or {},
        "ref": encoder.ref,
        "model": encoder.name,
        "variant": encoder.variant,
        "checkpoint_step": encoder.step,
        "image_size": encoder.image_size,
        "pretraining_normalization": encoder.normalization,
        "feature_definition": encoder.feature_definition,
        "missing_bands": missing_bands,
    }


def _encoder_notes(card: Mapping[str, Any]) -> list[str]:
    """Markdown lines on the features read and the bands read as zeros."""
    notes = []
    if card["feature_definition"]:
        notes.append(f"\n**Features**: {card['feature_definition']}\n")
    if card.get("stand_in_bands"):
        listed = "; ".join(
            f"{key}: " + ", ".join(f"{data} for {trained}" for trained, data in pairs.items())
            for key, pairs in card["stand_in_bands"].items()
        )
        notes.append(
            f"\n**Bands matched by wavelength** (data band for pretraining band): {listed}\n"
        )
    if card["missing_bands"]:
        listed = "; ".join(f"{k}: {', '.join(b)}" for k, b in card["missing_bands"].items())
        notes.append(
            f"\n**Zero-filled bands** (the encoder was pretrained on them; the data lack them):"
            f" {listed}\n"
        )
    return notes


def corruption_grid(c: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """(corruption, severity) cells of a `robustness` config block; ("all",) = all twelve."""
    names = (
        list(corruptions.CORRUPTIONS) if tuple(c.corruptions) == ("all",) else list(c.corruptions)
    )
    unknown = [n for n in names if n not in corruptions.CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; known: {list(corruptions.CORRUPTIONS)}")
    bad = [s for s in c.severities if s not in robustness.SEVERITIES]
    if bad:
        raise ValueError(f"severities {bad} outside 1..5")
    return [(n, int(s)) for n in names for s in c.severities]


def robustness_sweep(
    c: ml_collections.ConfigDict, evaluate: Callable[[tuple[str, int]], float], clean: float
) -> dict[str, Any] | None:
    """Evaluates every cell of the grid; the `robustness.summarize` dict (None if no cell)."""
    cells: dict[str, dict[int, float]] = {}
    grid = corruption_grid(c)
    for done, (name, severity) in enumerate(grid, 1):
        cells.setdefault(name, {})[severity] = float(evaluate((name, severity)))
        print(
            f"robustness {done}/{len(grid)} | {name} severity {severity}:"
            f" {cells[name][severity]:.4f}",
            flush=True,
        )
    if not cells:
        return None
    summary = robustness.summarize(clean, cells)
    summary["spec_version"] = corruptions.SPEC_VERSION
    return summary


def below_baselines(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The baselines of `result["baselines"]` ({name: {"description", "metrics"}}) whose headline
    metric (higher is better) is above the encoder's, each as {"baseline", "metric", "encoder",
    "baseline_value"}."""
    metric = result["headline_metric"]
    ours = result["metrics"][metric]
    return [
        {"baseline": name, "metric": metric, "encoder": ours, "baseline_value": value}
        for name, baseline in result.get("baselines", {}).items()
        if (value := baseline["metrics"].get(metric)) is not None and value > ours
    ]


def _baselines_markdown(result: Mapping[str, Any]) -> list[str]:
    """The "Baselines" section: the encoder and every baseline on the headline metric."""
    metric = result["headline_metric"]
    rows = [f"| model | {metric} | what it is |", "|---|---|---|"]
    rows.append(f"| encoder | {result['metrics'][metric]:.3f} | {result['encoder']['ref']} |")
    for name, baseline in result["baselines"].items():
        value = baseline["metrics"].get(metric)
        shown = "n/a" if value is None else f"{value:.3f}"
        rows.append(f"| {name} | {shown} | {baseline['description']} |")
    return ["\n## Baselines (same split)\n\n", "\n".join(rows) + "\n"]


def _threshold_markdown(threshold: Mapping[str, Any], metric: str) -> list[str]:
    """The F1-optimal threshold of the class-1 probability on the training pixels."""
    return [
        f"\n**Threshold**: the class-1 probability threshold with the best F1 on the training"
        f" pixels is {threshold['value']:.3f} (train F1 {threshold['train_f1']:.3f}); at it the"
        f" test F1 is {threshold['test_f1']:.3f} and {metric}"
        f" {threshold['test_metrics'][metric]:.3f} (the table's scores use the argmax).\n"
    ]


def _warnings_markdown(below: list[dict[str, Any]]) -> list[str]:
    if not below:
        return []
    listed = "; ".join(f"{b['baseline']} {b['baseline_value']:.3f}" for b in below)
    metric, ours = below[0]["metric"], below[0]["encoder"]
    return [f"\n**Below baseline**: the encoder's {metric} {ours:.3f} is under {listed}.\n"]


def _markdown_table(row: Mapping[str, Any]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):  # an interval
            return " - ".join(f"{x:.3f}" for x in v)
        return str(v)

    cells = [cell(v) for v in row.values()]
    return (
        "| " + " | ".join(row) + " |\n|" + "---|" * len(row) + "\n| " + " | ".join(cells) + " |\n"
    )


def write(
    workdir: str | os.PathLike,
    result: dict[str, Any],
    *,
    class_names: list[str],
    overlay: dict[str, Any] | None = None,
) -> None:
    """Writes report.json, report.md and the plots; adds their names under result["plots"].

    Args:
      result: needs task, encoder, data (with "split", the split in words), metrics,
        headline_metric; optional confusion, robustness (a `robustness.summarize` dict),
        baselines ({name: {"description", "metrics"}} on the same split: listed, and any whose
        headline beats the encoder's is flagged at the top and in result["below_baselines"]),
        warnings (sentences shown at the top), threshold ({"value", "train_f1", "test_f1",
        "test_metrics"} of a two-class dense task) and data["provenance"]
        (`provenance.describe`).
      overlay: optional keyword arguments of `plots.overlays` (images, truth, pred, ...).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    figures = {}
    if "confusion" in result:
        figures["confusion"] = plots.confusion_matrix(
            np.asarray(result["confusion"]), class_names, workdir / "confusion.png"
        )
    metric = result["headline_metric"]
    if result.get("robustness"):
        figures["robustness"] = plots.robustness_curves(
            result["robustness"], metric, workdir / "robustness.png"
        )
    if overlay is not None:
        figures["overlays"] = plots.overlays(
            **overlay, class_names=class_names, path=workdir / "overlays.png"
        )
    result["plots"] = {k: p.name for k, p in figures.items()}
    enc, data = result["encoder"], result["data"]
    result["below_baselines"] = below_baselines(result)
    head = {
        "task": result["task"],
        "method": result.get("method", ""),
        "encoder": f"{enc['model']}:{enc['variant']}",
        "step": enc["checkpoint_step"],
        "data": data["source"],
        "normalisation": data["normalization"],
        "size": enc["image_size"],
    }
    head.update({k: v for k, v in result["metrics"].items() if isinstance(v, float | list)})
    md = [
        f"# {result['task']}: {head['encoder']} on {data['source']}\n",
        *_warnings_markdown(result["below_baselines"]),
        *[f"\n**Warning**: {warning}\n" for warning in result.get("warnings", [])],
        _markdown_table(head),
        f"\n**Split**: {data['split']}\n",
        *_encoder_notes(enc),
    ]
    if result.get("baselines"):
        md += _baselines_markdown(result)
    if result.get("threshold"):
        md += _threshold_markdown(result["threshold"], metric)
    if data.get("provenance"):
        md += ["\n## Data\n\n", provenance.markdown(data["provenance"])]
    if result.get("robustness"):
        md += [
            "\n## Robustness (REOBench-style corruptions)\n",
            robustness.markdown(result["robustness"], metric),
        ]
    md += [f"\n![{name}]({fname})\n" for name, fname in result["plots"].items()]
    files.write_text_atomic(workdir / "report.json", json.dumps(result, indent=2))
    files.write_text_atomic(workdir / "report.md", "".join(md))
