"""Atomic file writes: a file is written beside its target and moved into place whole, so a crash or a kill
never leaves a half-written record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _temp(path)
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    path = Path(path)
    tmp = _temp(path)
    df.to_csv(tmp, index=False)
    tmp.replace(path)
