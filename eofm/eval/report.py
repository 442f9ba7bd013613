"""One results report per evaluation run: report.json, report.md and PNG plots in the workdir.

An evaluation writes only in its own workdir (`prepare_workdir`, before any compute): never in the
encoder's run, which it only reads.

The JSON holds everything (encoder card, data card, settings, metrics, robustness table); the
Markdown gives the headline table, the robustness table and links to the plots:
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
from eofm.eval import corruptions, encoders, plots, robustness
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


def encoder_card(encoder: encoders.Encoder, missing_bands: dict[str, list[str]]) -> dict[str, Any]:
    """What was evaluated: reference, family, variant, checkpoint step, input recipe, the
    definition of its features and `missing_bands` ({data key: bands zero-filled}, see
    `Encoder.zero_filled_bands`)."""
    return {
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
    for name, severity in corruption_grid(c):
        cells.setdefault(name, {})[severity] = float(evaluate((name, severity)))
    if not cells:
        return None
    summary = robustness.summarize(clean, cells)
    summary["spec_version"] = corruptions.SPEC_VERSION
    return summary


def _described(split: int | list[str]) -> str:
    """A split as a count of examples or a list of scene ids."""
    return ", ".join(split) if isinstance(split, list) else str(split)


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
      result: needs task, encoder, data, metrics, headline_metric; optional confusion and
        robustness (a `robustness.summarize` dict).
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
    head = {
        "task": result["task"],
        "method": result.get("method", ""),
        "encoder": f"{enc['model']}:{enc['variant']}",
        "step": enc["checkpoint_step"],
        "data": f"{data['source']} (train {_described(data['train'])}, test"
        f" {_described(data['test'])})",
        "normalisation": data["normalization"],
        "size": enc["image_size"],
    }
    head.update({k: v for k, v in result["metrics"].items() if isinstance(v, float | list)})
    md = [
        f"# {result['task']}: {head['encoder']} on {data['source']}\n",
        _markdown_table(head),
        *_encoder_notes(enc),
    ]
    if result.get("robustness"):
        md += [
            "\n## Robustness (REOBench-style corruptions)\n",
            robustness.markdown(result["robustness"], metric),
        ]
    md += [f"\n![{name}]({fname})\n" for name, fname in result["plots"].items()]
    files.write_text_atomic(workdir / "report.json", json.dumps(result, indent=2))
    files.write_text_atomic(workdir / "report.md", "".join(md))
