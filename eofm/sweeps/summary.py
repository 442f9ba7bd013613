"""A sweep's results in one place: each point's final metrics (the last record of a pretraining
run's metrics.jsonl, the metrics of an evaluation's report.json) with its overrides, as
ROOT/summary.csv and ROOT/summary.md, and ROOT/summary.png: the loss curves of pretraining runs,
or an evaluation metric against the first swept value.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eofm import files
from eofm.sweeps import spec
from eofm.train import metrics as metrics_lib

# Per-step fields of metrics.jsonl that describe speed, not the result.
TIMING_FIELDS = ("images_per_sec", "step_time_s", "mfu")


def final_metrics(program: str, workdir: Path) -> dict[str, float]:
    """The run's final scalar metrics ({} when it has none yet)."""
    if Path(program).parent.name == "finetune":
        report = workdir / "report.json"
        found = json.loads(report.read_text())["metrics"] if report.exists() else {}
    else:
        log = workdir / "metrics.jsonl"
        records = metrics_lib.read_records(log) if log.exists() else []
        found = records[-1] if records else {}
    return {k: float(v) for k, v in found.items() if spec.is_number(v) and k not in TIMING_FIELDS}


def collect(sweep: spec.Sweep, root: Path) -> list[dict[str, Any]]:
    """One row per point: point, status, its overrides (by key), then its final metrics."""
    rows = []
    for point in sweep.points:
        workdir = root / point.name
        if spec.finished(sweep.program, point.config, workdir):
            status = "finished"
        else:
            status = "unfinished" if workdir.exists() else "not started"
        rows.append(
            {
                "point": point.name,
                "status": status,
                **point.overrides,
                **final_metrics(sweep.program, workdir),
            }
        )
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _text(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_text(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(sweep: spec.Sweep, root: Path, rows: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (pretraining) or the first metric against the first swept key (evaluation)."""
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if Path(sweep.program).parent.name == "finetune":
        _metric_plot(ax, sweep, rows)
    else:
        _loss_plot(ax, sweep, root)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _loss_plot(ax, sweep: spec.Sweep, root: Path) -> None:
    for point in sweep.points:
        log = root / point.name / "metrics.jsonl"
        records = [r for r in metrics_lib.read_records(log) if "loss" in r] if log.exists() else []
        if records:
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=point.name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{sweep.config_file.name}: loss of each point")
    if ax.lines:
        ax.legend(fontsize=7)


def _metric_plot(ax, sweep: spec.Sweep, rows: list[dict[str, Any]]) -> None:
    keys = list(sweep.points[0].overrides) if sweep.points else []
    metric_names = [c for c in _columns(rows) if c not in ("point", "status", *keys)]
    if not keys or not metric_names:
        ax.set_title("no finished point to plot")
        return
    x_key, metric = keys[0], metric_names[0]
    groups: dict[str, list[tuple[Any, float]]] = {}
    for row in rows:
        if metric in row:
            rest = ",".join(f"{k.split('.')[-1]}={row[k]}" for k in keys[1:])
            groups.setdefault(rest, []).append((row[x_key], row[metric]))
    for label, values in groups.items():
        values.sort(key=lambda v: v[0])
        ax.plot([v[0] for v in values], [v[1] for v in values], marker="o", label=label or None)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{sweep.config_file.name}: {metric} against {x_key}")
    if any(groups) and len(groups) > 1:
        ax.legend(fontsize=7)


def write(sweep: spec.Sweep, root: Path) -> dict[str, Path]:
    """Writes summary.csv, summary.md and summary.png under `root`; returns their paths."""
    rows = collect(sweep, root)
    paths = {"csv": root / "summary.csv", "md": root / "summary.md", "png": root / "summary.png"}
    files.write_text_atomic(paths["csv"], to_csv(rows))
    files.write_text_atomic(paths["md"], to_markdown(rows))
    plot(sweep, root, rows, paths["png"])
    return paths
