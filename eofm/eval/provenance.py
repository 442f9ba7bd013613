"""Where an evaluation's data came from: the files each split read, counted and hashed.

A report records, for each source an evaluation built ("train", "test", or "train+test" when one
source is split by the evaluation), the folder its files share, how many files it read and the
SHA-256 of the file list (each file's path relative to that folder and its size in bytes, one per
line, sorted). Two reports with the same hash read the same files, wherever the data were
mounted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any


def files_read(source: Any) -> list[str]:
    """The files `source` reads (`reads_from()["files"]`; [] for a source that does not say)."""
    reads = getattr(source, "reads_from", None)
    return [os.fspath(f) for f in reads()["files"]] if reads is not None else []


def file_list_digest(files: list[str], root: str) -> str:
    """SHA-256 of the sorted "relative path<TAB>size" lines of `files` under `root`."""
    lines = sorted(
        f"{os.path.relpath(f, root)}\t{os.path.getsize(f) if os.path.exists(f) else -1}"
        for f in files
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def source_card(source: Any) -> dict[str, Any]:
    """{"root", "files", "files_sha256"} of one source (root: the absolute folder its files
    share)."""
    files = [os.path.abspath(f) for f in files_read(source)]
    if not files:
        return {"root": None, "files": 0, "files_sha256": None}
    root = os.path.commonpath(files)
    if len(files) == 1 or os.path.isfile(root):
        root = os.path.dirname(root)
    return {"root": root, "files": len(files), "files_sha256": file_list_digest(files, root)}


def describe(sources: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{role: `source_card`} of the sources an evaluation read, e.g. {"train": ..., "test": ...}."""
    return {role: source_card(source) for role, source in sources.items()}


def markdown(cards: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: role, root, files, the first 12 hex digits of the hash."""
    rows = ["| split | root | files | file list SHA-256 |", "|---|---|---|---|"]
    for role, card in cards.items():
        digest = (card["files_sha256"] or "")[:12]
        rows.append(f"| {role} | {card['root']} | {card['files']} | {digest} |")
    return "\n".join(rows) + "\n"
