"""Run an evaluation: prepare the reference, read the text through every model, score each position.

Cost. The text is read in sequence mode, CHUNK positions per call: `Model.forward_all` returns the
logits after every token of a call (the head runs as a matrix × matrix product over the chunk), so
every weight block is read once per chunk, not once per token, and the float64 scoring works on
(CHUNK, V) blocks.

Order. The reference runs in lockstep with the first model (so a cancel at any point leaves figures
for at least that model) and keeps its float32 logits in a memory-mapped scratch file (positions ×
vocab × 4 bytes, 100 MB for 512 positions of a 50k vocabulary), which the later models are compared
against; only the reference and one model are mapped at a time. The reference is closed as soon as
all its positions are stored.

Cancel. The token is polled before every chunk of CHUNK positions; on cancel the positions scored so far are kept,
the models not reached are reported with no positions, and the report is marked partial. Partial
results are never saved.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.atomic import check_free_space
from runtime.errors import CancelledError, RwkvError
from runtime.eval.metrics import Scores
from runtime.eval.result import EvalError, EvalReport, EvalResult
from runtime.eval.store import save_evaluation
from runtime.formats.checkpoint import Checkpoint, open_checkpoint
from runtime.formats.detect import Architecture
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.quant.mixes import parse_target
from runtime.quant.types import DType

if TYPE_CHECKING:
    from runtime.model.model import Model

DEFAULT_MAX_TOKENS = 512
CHUNK = 64  # positions per forward_all call and per scoring block ((CHUNK, V) floats)
RUNNABLE = ("gguf", "rwkvcpp")  # loaded as they are; anything else is converted first

PathLike = str | os.PathLike[str]


@dataclass
class _Entry:
    """One model to evaluate."""

    label: str
    path: Path
    keep_path: bool  # False for temporary copies: the result's path is None
    ckpt: Checkpoint

    @property
    def shape(self) -> ModelShape:
        return _model_shape(self.ckpt.arch)


def _types(ckpt: Checkpoint) -> tuple[str, str]:
    """(layer matrices' type or 'mixed', head type) of a checkpoint.

    The layer matrices are the layers' `.weight` matrices (BlinkDL names), the ones a format's type
    is chosen for: RWKV-7's LoRA factors (`att.w1` …) and r_k stay float in every format, as they
    do in rwkv.cpp's files.
    """
    mats = {t.dtype for n, t in ckpt.tensors.items()
            if len(t.shape) == 2 and n.startswith("blocks.") and n.endswith(".weight")}
    matrices = next(iter(mats)).name if len(mats) == 1 else "mixed"
    head = ckpt.tensors["head.weight"].dtype.name if "head.weight" in ckpt.tensors else "?"
    return matrices, head


ModelShape = tuple[str, int, int, int, int, tuple[int, ...] | None]  # what quantized copies of one model share


def _model_shape(arch: Architecture) -> ModelShape:
    """Architecture, layers, width, vocabulary, head size, and the LoRA ranks (RWKV-7's four, RWKV-6's
    D_mix and D_decay)."""
    ranks = arch.lora if arch.lora is not None else arch.mix_ranks
    return arch.name, arch.n_layer, arch.n_embd, arch.n_vocab, arch.head_size, None if ranks is None else tuple(ranks)


def _shape_text(shape: ModelShape) -> str:
    name, n_layer, n_embd, n_vocab, head_size, ranks = shape
    text = f"{name}, {n_layer} layers × {n_embd}, vocabulary {n_vocab}"
    if head_size:
        text += f", head size {head_size}"
    if ranks is not None:
        text += f", LoRA ranks {'/'.join(str(r) for r in ranks)}"
    return text


def _check_same_shape(entry: _Entry, ref_path: Path, ref_shape: ModelShape) -> None:
    if entry.shape != ref_shape:
        raise EvalError(
            f"{entry.path} is not the same model as the reference {ref_path}: it has "
            f"{_shape_text(entry.shape)}, the reference {_shape_text(ref_shape)}"
        )


def tokenize_for(text: str, model: Model) -> list[int]:
    """Token ids of `text` through the tokenizer the model uses (`model.tokenizer`, chosen by its vocabulary)."""
    if model.tokenizer_name == "none":
        raise EvalError(
            f"{model.path}: no known tokenizer for a vocabulary of {model.n_vocab} tokens; "
            "give token ids instead (--tokens FILE)"
        )
    try:
        tok = model.tokenizer
    except RwkvError as e:
        raise EvalError(f"{e}; give token ids instead (--tokens FILE)") from e
    return [int(i) for i in tok.encode(text)]


def _check_tokens(tokens: Sequence[int], n_vocab: int, source: str) -> np.ndarray:
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise EvalError(f"{source} gives {ids.size} token(s); at least 2 are needed (one to feed, one to predict)")
    bad = (ids < 0) | (ids >= n_vocab)
    if bad.any():
        i = int(np.argmax(bad))
        raise EvalError(f"{source}: token id {int(ids[i])} at index {i} is outside the vocabulary (0..{n_vocab - 1})")
    return ids


class _Reference:
    """The reference model, run lazily up to the position asked for; its logits kept on disk."""

    def __init__(self, path: Path, threads: int | None) -> None:
        from runtime.model.model import load_model

        self.path = path
        self.model = load_model(path, threads)
        self.fingerprint = self.model.fingerprint
        self.inputs = np.zeros(0, dtype=np.int64)
        self.logits = np.zeros((0, self.model.n_vocab), dtype=np.float32)
        self.state = self.model.new_state()
        self.done = 0
        self.seconds = 0.0

    def start(self, inputs: np.ndarray, scratch: Path) -> None:
        """Positions to run: the logits after each of `inputs`, kept in a scratch file."""
        self.inputs = inputs
        shape = (len(inputs), self.logits.shape[1])
        check_free_space(scratch, 4 * shape[0] * shape[1])  # a full disk under a memmap would be SIGBUS
        self.logits = np.lib.format.open_memmap(scratch / "reference-logits.npy", "w+", np.float32, shape)

    def ensure(self, t: int) -> None:
        """Run the reference up to and including position t."""
        while self.done <= t:
            end = min(len(self.inputs), self.done + CHUNK)
            t0 = time.perf_counter()
            logits, self.state = self.model.forward_all(self.inputs[self.done:end], self.state)
            self.seconds += time.perf_counter() - t0
            _check_finite(logits, self.path, self.done)
            self.logits[self.done:end] = logits
            self.done = end
        if self.done == len(self.inputs):
            self.close()

    def scores(self, targets: np.ndarray) -> Scores:
        s = Scores()
        for a in range(0, self.done, CHUNK):
            b = min(self.done, a + CHUNK)
            s.add(self.logits[a:b], targets[a:b])
        return s

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None


def _check_finite(logits: np.ndarray, path: Path, first: int) -> None:
    """`logits`: (positions, V), from position `first` on."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise EvalError(f"{path}: the model produced non-finite logits at position {first + int(np.argmax(bad))}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class _Run:
    """Shared state of one evaluation."""

    def __init__(
        self, ref: _Reference, ids: np.ndarray, text_label: str, ref_label: str,
        progress: ProgressCallback, cancel: CancelToken, threads: int | None,
    ) -> None:
        self.ref, self.ids, self.text_label, self.ref_label = ref, ids, text_label, ref_label
        self.inputs, self.targets = ids[:-1], ids[1:]
        self.positions = len(self.inputs)
        self.tokens_sha256 = hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()
        self.progress, self.cancel, self.threads = progress, cancel, threads
        self.cancelled = False

    def result(
        self, entry: _Entry, scores: Scores, fingerprint: str, seconds: float, is_ref: bool = False
    ) -> EvalResult:
        matrices, head = _types(entry.ckpt)
        st = entry.path.stat() if entry.path.exists() else None
        return EvalResult(
            label=entry.label, path=str(entry.path.resolve()) if entry.keep_path else None,
            file_bytes=st.st_size if st else 0, matrices=matrices, head=head, fingerprint=fingerprint,
            reference=self.ref_label, text=self.text_label, tokens_sha256=self.tokens_sha256,
            positions=scores.positions, positions_wanted=self.positions, perplexity=scores.perplexity,
            kl_mean=0.0 if is_ref else scores.kl_mean, kl_p99=0.0 if is_ref else scores.kl_p99,
            top1=1.0 if is_ref else scores.top1, max_logit_diff=0.0 if is_ref else scores.max_logit_diff,
            tokens_per_second=scores.positions / seconds if seconds > 0 else 0.0, is_reference=is_ref,
            measured_at=_now(), file_mtime_ns=st.st_mtime_ns if st else 0,
        )

    def score(self, entry: _Entry) -> EvalResult:
        """Decode the text through one model, comparing each position with the reference."""
        from runtime.model.model import load_model

        if self.cancelled:
            return self.result(entry, Scores(), "", 0.0)
        scores, seconds = Scores(), 0.0
        what = f"eval {entry.label}"
        with load_model(entry.path, self.threads) as model:
            state = model.new_state()
            self.progress(Progress(what, 0, self.positions, "tok"))
            try:
                for a in range(0, self.positions, CHUNK):
                    self.cancel.raise_if_cancelled()
                    b = min(self.positions, a + CHUNK)
                    self.ref.ensure(b - 1)
                    t0 = time.perf_counter()
                    logits, state = model.forward_all(self.inputs[a:b], state)
                    seconds += time.perf_counter() - t0
                    _check_finite(logits, entry.path, a)
                    scores.add(logits, self.targets[a:b], self.ref.logits[a:b])
                    self.progress(Progress(what, b, self.positions, "tok"))
            except CancelledError:
                self.cancelled = True
            return self.result(entry, scores, model.fingerprint, seconds)

    def reference_result(self, entry: _Entry) -> EvalResult:
        """Run the reference alone over what the models did not need (all of it when there are none)."""
        what = f"eval {entry.label}"
        try:
            for t in range(self.ref.done, self.positions):
                self.cancel.raise_if_cancelled()
                self.ref.ensure(t)
                self.progress(Progress(what, t + 1, self.positions, "tok"))
        except CancelledError:
            self.cancelled = True
        self.ref.close()
        return self.result(entry, self.ref.scores(self.targets), self.ref.fingerprint, self.ref.seconds, is_ref=True)


def _prepare_reference(
    reference: Path, ckpt: Checkpoint, scratch: Path, reference_type: str,
    progress: ProgressCallback, cancel: CancelToken, threads: int | None,
) -> Path:
    """A runnable float file for `reference`: itself if it is one, else a temporary conversion."""
    kind = ckpt.source_format
    if kind in RUNNABLE:
        quantized = sorted({t.dtype.name for t in ckpt.tensors.values() if t.dtype.is_quantized})
        if quantized:
            raise EvalError(
                f"the reference {reference} is quantized ({', '.join(quantized)}); give an F32 or F16 file "
                "or the source checkpoint (.pth, .safetensors)"
            )
        return reference
    rtype = DType.parse(reference_type)
    if rtype not in (DType.F32, DType.F16):
        raise EvalError(f"reference type must be f32 or f16, not {reference_type}")
    from runtime.convert import convert

    dst = scratch / f"reference-{rtype.name.lower()}.gguf"

    def relabel(e: Progress) -> None:
        progress(Progress(f"convert reference ({rtype.name})", e.done, e.total, e.unit))

    convert(reference, dst, rtype, progress=relabel, cancel=cancel, threads=threads)
    return dst


def _execute(
    entries: list[_Entry], ref_path: Path, ref_label: str, text: str | Sequence[int], *, text_label: str,
    max_tokens: int, scratch: Path, progress: ProgressCallback, cancel: CancelToken, threads: int | None,
    save: bool,
) -> EvalReport:
    t0 = time.perf_counter()
    ref_ckpt = open_checkpoint(ref_path)
    ref_entry = _Entry(f"{ref_label} (reference)", ref_path, False, ref_ckpt)
    n_vocab = ref_ckpt.arch.n_vocab
    ref = _Reference(ref_path, threads)
    try:
        if isinstance(text, str):
            ids = _check_tokens(tokenize_for(text, ref.model)[:max_tokens], n_vocab, text_label or "the text")
        else:
            ids = _check_tokens(list(text)[:max_tokens], n_vocab, text_label or "the token ids")
        ref.start(ids[:-1], scratch)
        run = _Run(ref, ids, text_label, ref_label, progress, cancel, threads)
        results = [run.score(e) for e in entries]
        ref_result = run.reference_result(ref_entry)
    finally:
        ref.close()
    report = EvalReport(ref_result, results, run.positions, run.cancelled, time.perf_counter() - t0)
    if save:
        for r in results:
            if r.path is not None and not r.partial:
                save_evaluation(r)
    return report


def _check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 2:
        raise EvalError(f"the token limit must be at least 2 (one to feed, one to predict), not {max_tokens}")


def _scratch_dir(work_dir: PathLike | None) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="rwkv-tui-eval-", dir=work_dir)


def evaluate(
    models: Sequence[PathLike],
    reference: PathLike,
    text: str | Sequence[int],
    *,
    labels: Sequence[str] | None = None,
    text_label: str = "",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    reference_type: str = "f32",
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    threads: int | None = None,
    work_dir: PathLike | None = None,
    save: bool = True,
) -> EvalReport:
    """Compare each model file with `reference` on `text` (a string, or token ids) over ≤ max_tokens tokens.

    `reference` is an F32/F16 GGUF or rwkv.cpp file of the same model, or its source checkpoint
    (converted to a temporary `reference_type` GGUF in `work_dir`, default the system temp folder,
    deleted afterwards). A string is tokenized with the reference's tokenizer. Complete results of
    model files are saved for `evaluation_for` unless `save` is False.
    """
    cancel = cancel or CancelToken()
    _check_max_tokens(max_tokens)
    ref_ckpt = open_checkpoint(reference)
    ref_shape = _model_shape(ref_ckpt.arch)
    labels = list(labels) if labels is not None else [Path(m).name for m in models]
    if len(labels) != len(models):
        raise EvalError(f"{len(labels)} labels for {len(models)} models")
    entries = []
    for m, label in zip(models, labels, strict=True):
        path = Path(m)
        entry = _Entry(label, path, True, open_checkpoint(path))
        if entry.ckpt.source_format not in RUNNABLE:
            raise EvalError(f"{path} is a source checkpoint; convert it first (rwkv-tui convert) or use --formats")
        _check_same_shape(entry, Path(reference), ref_shape)
        entries.append(entry)
    with _scratch_dir(work_dir) as tmp:
        scratch = Path(tmp)
        try:
            ref_path = _prepare_reference(Path(reference), ref_ckpt, scratch, reference_type, progress, cancel, threads)
        except CancelledError:
            return EvalReport(None, [], 0, cancelled=True)
        return _execute(
            entries, ref_path, _ref_label(Path(reference), ref_path), text, text_label=text_label,
            max_tokens=max_tokens, scratch=scratch, progress=progress, cancel=cancel, threads=threads, save=save,
        )


def _ref_label(reference: Path, ref_path: Path) -> str:
    if reference == ref_path:
        return reference.name
    return f"{reference.name} as {ref_path.stem.removeprefix('reference-').upper()}"


def evaluate_formats(
    source: PathLike,
    formats: Sequence[str],
    text: str | Sequence[int],
    *,
    reference: PathLike | None = None,
    text_label: str = "",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    reference_type: str = "f32",
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    threads: int | None = None,
    work_dir: PathLike | None = None,
) -> EvalReport:
    """Quantize temporary copies of `source` to each of `formats` (types or K-quant mixes, as `convert`
    takes them: "q5_1", "q4_k_m") and compare them with the reference.

    The reference is `reference` if given, else `source` itself (converted to `reference_type` when it
    is a checkpoint). The copies live in a temporary folder in `work_dir` and are deleted afterwards;
    their results are not saved. A cancel during conversion returns a report with no figures.
    """
    from runtime.convert import convert

    cancel = cancel or CancelToken()
    _check_max_tokens(max_tokens)
    try:
        targets = [parse_target(f) for f in formats]
    except ValueError as e:
        raise EvalError(str(e)) from None
    if not targets:
        raise EvalError("--formats needs at least one type, e.g. q4_0,q5_1,q8_0,f16")
    src_ckpt = open_checkpoint(source)
    ref = Path(reference) if reference is not None else Path(source)
    ref_ckpt = src_ckpt if reference is None else open_checkpoint(ref)
    ref_shape = _model_shape(ref_ckpt.arch)
    _check_same_shape(_Entry(Path(source).name, Path(source), False, src_ckpt), ref, ref_shape)
    t0 = time.perf_counter()
    with _scratch_dir(work_dir) as tmp:
        scratch = Path(tmp)
        entries: list[_Entry] = []
        try:
            ref_path = _prepare_reference(ref, ref_ckpt, scratch, reference_type, progress, cancel, threads)
            for t in targets:
                name = t.name.lower()
                reuse = reference is None and ref_path != ref and ref_path.stem == f"reference-{name}"
                dst = ref_path if reuse else scratch / f"{name}.gguf"
                if not reuse:
                    convert(source, dst, t, progress=_relabel(progress, f"convert {name}"), cancel=cancel,
                            threads=threads)
                entries.append(_Entry(name, dst, False, open_checkpoint(dst)))
        except CancelledError:
            return EvalReport(None, [], 0, cancelled=True, seconds=time.perf_counter() - t0)
        report = _execute(
            entries, ref_path, _ref_label(ref, ref_path), text, text_label=text_label, max_tokens=max_tokens,
            scratch=scratch, progress=progress, cancel=cancel, threads=threads, save=False,
        )
    report.seconds = time.perf_counter() - t0
    return report


def _relabel(progress: ProgressCallback, what: str) -> Callable[[Progress], None]:
    def call(e: Progress) -> None:
        progress(Progress(what, e.done, e.total, e.unit))

    return call
