"""`convert --calibrate TEXT`: activation statistics from reading a text with the source model.

The text is tokenized with the model's tokenizer (rwkv.cpp's tiny byte-level models, vocabulary 256
and no tokenizer: one token per byte), cut to MAX_TOKENS, and read by the numpy forward pass
(runtime.quant.forward_np) over the source's float weights. For every matrix the importance of input
column j is the mean of x_j² over the tokens, as llama.cpp's imatrix; a column the text never
activates gets a floor of FLOOR × the matrix's mean importance instead of 0 (with 0, ggml's weighted
search can zero a whole block that other texts do use). runtime.quant.weighted uses them when
choosing scales and rounding; the mean x·xᵀ of each matrix's input (as far as SECOND_MOMENTS_BUDGET
allows) lets runtime.quant.gptq carry rounding errors over to the columns not yet quantized.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import RwkvError
from runtime.formats.checkpoint import Checkpoint
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.quant.forward_np import final_hidden

MAX_TOKENS = 4096
FLOOR = 1e-3
SECOND_MOMENTS_BUDGET = 1 << 30  # bytes of float64 x·xᵀ matrices kept; matrices beyond use the importance only
BYTE_VOCAB = 256


class CalibrationError(RwkvError, ValueError):
    """The calibration text cannot be used (missing, empty, not UTF-8, no tokenizer)."""


@dataclass(frozen=True)
class Calibration:
    """Importance per input column of each matrix, by BlinkDL name, and what it was measured on."""

    importance: dict[str, np.ndarray]
    second_moments: dict[str, np.ndarray]  # mean x·xᵀ of each matrix's input (runtime.quant.gptq)
    text_name: str
    text_sha256: str
    n_tokens: int


def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, sha256 of its bytes) of a calibration text file; CalibrationError if unusable."""
    p = Path(path)
    if not p.is_file():
        problem = "is not a file" if p.exists() else "not found"
        raise CalibrationError(f"calibration text {p} {problem}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration text {p} is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise CalibrationError(f"calibration text {p} is empty: give a few thousand words of representative text")
    return text, hashlib.sha256(raw).hexdigest()


def tokens_for(ckpt: Checkpoint, text: str) -> np.ndarray:
    """The model's token ids of `text` (at most MAX_TOKENS)."""
    from runtime.text.gguf_vocab import tokenizer_for_metadata, tokenizer_name_for_metadata

    n_vocab = ckpt.arch.n_vocab
    if tokenizer_name_for_metadata(ckpt.metadata, n_vocab) == "none":
        if n_vocab != BYTE_VOCAB:
            raise CalibrationError(
                f"{ckpt.path}: no known tokenizer for a vocabulary of {n_vocab} tokens, so the calibration "
                "text cannot be read; convert without --calibrate"
            )
        ids = list(text.encode("utf-8"))
    else:
        ids = [int(i) for i in tokenizer_for_metadata(ckpt.metadata, n_vocab).encode(text)]
    if len(ids) < 2:
        raise CalibrationError("the calibration text is too short: it gives fewer than 2 tokens")
    return np.asarray(ids[:MAX_TOKENS], np.int64)


def collect_importance(ckpt: Checkpoint, tokens: np.ndarray, *, progress: ProgressCallback = no_progress,
                       cancel: CancelToken | None = None,
                       second_moments: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Mean x² per input column of every matrix the model multiplies by, over `tokens`; with a dict
    as `second_moments`, also the mean x·xᵀ of each matrix's input, while SECOND_MOMENTS_BUDGET lasts."""
    sums: dict[str, np.ndarray] = {}
    used = 0

    def record(name: str, rows: np.ndarray) -> None:
        nonlocal used
        x = rows.astype(np.float64)
        sq = np.square(x).sum(axis=0)
        sums[name] = sums[name] + sq if name in sums else sq
        if second_moments is not None:
            if name in second_moments:
                second_moments[name] += x.T @ x
            elif used + 8 * x.shape[1] ** 2 <= SECOND_MOMENTS_BUDGET:
                used += 8 * x.shape[1] ** 2
                second_moments[name] = x.T @ x

    def layer_done(done: int, total: int) -> None:
        progress(Progress("calibrating", done, total, "layers"))

    final_hidden(ckpt, tokens, record=record, cancel=cancel, progress=layer_done)
    out = {}
    for name, s in sums.items():
        mean = s / len(tokens)
        if not np.isfinite(mean).all():
            raise CalibrationError(f"{ckpt.path}: the activations entering '{name}' are not finite on this text")
        floor = FLOOR * float(mean.mean()) if mean.any() else 1.0
        out[name] = np.maximum(mean, floor).astype(np.float32)
    if second_moments is not None:
        for h in second_moments.values():
            h /= len(tokens)
    return out


def calibrate(ckpt: Checkpoint, text_path: str | os.PathLike[str], *, progress: ProgressCallback = no_progress,
              cancel: CancelToken | None = None) -> Calibration:
    """Read `text_path` with `ckpt` and return the importance of every matrix's input columns."""
    text, digest = read_text(text_path)
    tokens = tokens_for(ckpt, text)
    moments: dict[str, np.ndarray] = {}
    importance = collect_importance(ckpt, tokens, progress=progress, cancel=cancel, second_moments=moments)
    return Calibration(importance, moments, Path(text_path).name, digest, len(tokens))
