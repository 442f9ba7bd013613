"""REOBench-style robustness summary: a clean metric against the same metric under corruptions.

`cells[corruption][severity]` is the metric on the test set corrupted at that severity (1..5; a
subset of them is allowed). Each corruption is averaged over its severities, and `mean_corrupted`
is the mean of those per-corruption means, so every corruption weighs the same, as in REOBench.

    abs_drop = clean - mean_corrupted
    rel_drop = abs_drop / clean          (None when clean == 0)

REOBench reports clean - mean corrupted; whether its drop is absolute or relative is not published,
so both are reported. For a lower-is-better metric (e.g. a regression error) the sign is flipped,
`abs_drop = mean_corrupted - clean`, so a positive drop always means worse. The same definitions
apply per corruption (`per_corruption_abs_drop`, `per_corruption_rel_drop`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def _severity(corruption: str, key: Any) -> int:
    """The severity of a cell key: an int in 1..5, or its decimal string (as JSON writes it)."""
    try:
        if isinstance(key, bool):
            raise TypeError
        severity = int(key) if isinstance(key, str) else operator.index(key)
    except (TypeError, ValueError):
        raise ValueError(f"{corruption}: severity {key!r} is not an int in 1..5") from None
    if severity not in SEVERITIES:
        raise ValueError(f"{corruption}: severity {key!r} is outside 1..5")
    return severity


def _finite(name: str, value: Any) -> float:
    """value as a Python float; ValueError naming it if it is not a finite number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} = {value!r} is not finite")
    return out


def summarize(
    clean: float, cells: Mapping[str, Mapping[int, float]], *, higher_is_better: bool = True
) -> dict:
    """Clean vs corrupted metric, as a JSON-serialisable dict (severity keys become strings).

    Keys: clean, cells, per_corruption, mean_corrupted, abs_drop, rel_drop,
    per_corruption_abs_drop, per_corruption_rel_drop, worst (the corruption with the largest
    drop; the first one on ties) and higher_is_better.
    """
    clean = _finite("clean", clean)
    if not cells:
        raise ValueError("cells is empty: no corruption to summarise")
    sign = 1.0 if higher_is_better else -1.0

    def drops(value: float) -> tuple[float, float | None]:
        abs_drop = sign * (clean - value)
        return abs_drop, (abs_drop / clean if clean != 0 else None)

    table: dict[str, dict[str, float]] = {}
    per_corruption: dict[str, float] = {}
    per_abs: dict[str, float] = {}
    per_rel: dict[str, float | None] = {}
    for corruption, by_severity in cells.items():
        if not by_severity:
            raise ValueError(f"{corruption}: no severities")
        row: dict[int, float] = {}
        for key, value in by_severity.items():
            severity = _severity(corruption, key)
            if severity in row:
                raise ValueError(f"{corruption}: severity {severity} given twice")
            row[severity] = _finite(f"cells[{corruption!r}][{key!r}]", value)
        table[corruption] = {str(s): row[s] for s in sorted(row)}
        per_corruption[corruption] = math.fsum(row.values()) / len(row)
        per_abs[corruption], per_rel[corruption] = drops(per_corruption[corruption])

    mean_corrupted = math.fsum(per_corruption.values()) / len(per_corruption)
    abs_drop, rel_drop = drops(mean_corrupted)
    return {
        "clean": clean,
        "cells": table,
        "per_corruption": per_corruption,
        "mean_corrupted": mean_corrupted,
        "abs_drop": abs_drop,
        "rel_drop": rel_drop,
        "per_corruption_abs_drop": per_abs,
        "per_corruption_rel_drop": per_rel,
        "worst": max(per_abs, key=per_abs.__getitem__),
        "higher_is_better": higher_is_better,
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown(summary: dict, metric: str) -> str:
    """A Markdown table of a `summarize` dict: clean, one row per corruption, mean corrupted.

    Columns: severities 1..5 (blank where missing), the mean of `metric` and its absolute and
    relative drop. Numbers have 3 decimals, relative drops are percentages with 1 decimal.
    """
    direction = "higher is better" if summary["higher_is_better"] else "lower is better"
    header = ["corruption", *map(str, SEVERITIES), f"mean {metric}", "abs drop", "rel drop"]
    rows = [
        header,
        ["---"] + ["---:"] * (len(header) - 1),
        ["clean", *[""] * len(SEVERITIES), _number(summary["clean"]), "", ""],
    ]
    for corruption, by_severity in summary["cells"].items():
        rows.append(
            [
                corruption,
                *[_number(by_severity.get(str(s))) for s in SEVERITIES],
                _number(summary["per_corruption"][corruption]),
                _number(summary["per_corruption_abs_drop"][corruption]),
                _percent(summary["per_corruption_rel_drop"][corruption]),
            ]
        )
    rows.append(
        [
            "mean corrupted",
            *[""] * len(SEVERITIES),
            _number(summary["mean_corrupted"]),
            _number(summary["abs_drop"]),
            _percent(summary["rel_drop"]),
        ]
    )
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return f"{table}\n\n{metric}: {direction}; a positive drop means worse than clean.\n"
