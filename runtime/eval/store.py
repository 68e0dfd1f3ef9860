"""Saved evaluation results, so the app can show each model file's measured quality next to it.

One JSON file, `evaluations.json` in `runtime.paths.data_dir()`, rewritten atomically on each save:

    {"version": 1, "evaluations": {"/abs/path/m-q5_1.gguf": {...EvalResult.to_dict()...}, ...}}

Entries are keyed by the model file's absolute path and carry its size and mtime; `evaluation_for`
returns an entry only while the file still has that size and mtime (a re-converted file at the same
path has to be measured again). The newest evaluation of a file replaces the older one. A missing or
unreadable store reads as empty: the figures are a convenience, never a reason for the app to fail.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from runtime.atomic import atomic_write_bytes
from runtime.eval.result import EvalResult
from runtime.paths import data_dir

STORE_NAME = "evaluations.json"
STORE_VERSION = 1


def store_path() -> Path:
    return data_dir() / STORE_NAME


def _key(path: str | os.PathLike[str]) -> str:
    return str(Path(path).resolve())


def _read_raw() -> dict[str, dict]:
    try:
        doc = json.loads(store_path().read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != STORE_VERSION:
        return {}
    entries = doc.get("evaluations")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}


def load_evaluations() -> dict[str, EvalResult]:
    """Every saved result by absolute model path (stale ones included: compare size and mtime)."""
    out: dict[str, EvalResult] = {}
    for key, value in _read_raw().items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[key] = EvalResult.from_dict(value)
    return out


def evaluation_for(path: str | os.PathLike[str]) -> EvalResult | None:
    """The saved result for the model file at `path`, if the file is unchanged since it was measured."""
    result = load_evaluations().get(_key(path))
    if result is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    if st.st_size != result.file_bytes or st.st_mtime_ns != result.file_mtime_ns:
        return None
    return result


def save_evaluation(result: EvalResult) -> None:
    """Save a complete result of a model file (replacing that file's previous one)."""
    if result.path is None:
        raise ValueError("only results of model files (not temporary copies) can be saved")
    if result.partial:
        raise ValueError("a partial result is not saved")
    entries = _read_raw()
    entries[_key(result.path)] = result.to_dict()
    doc = {"version": STORE_VERSION, "evaluations": entries}
    atomic_write_bytes(store_path(), json.dumps(doc, indent=1, sort_keys=True).encode())
