"""Convert any supported model file to GGUF, quantizing on the way, streaming, with progress.

One pass over the source: each tensor is read a block of rows at a time, decoded to float32, given
the load-time transforms it does not carry yet, checked for NaN/Inf, quantized on a small thread
pool and written in order into a temporary file beside the destination, which is renamed into place
only when complete and flushed. Memory stays bounded by a few chunks whatever the model's size.

Matrices that need no transform (all but the embedding when ln0 is folded into it) skip the float32
step: their stored bf16/f16/f32 bytes go straight to native code (`runtime.quant.native`, same bytes
as the numpy codec), read in small pieces that stay in cache. `RWKV_TUI_NATIVE_QUANTIZE=0` turns that
off (for comparisons).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_output, check_free_space
from runtime.convert_rwkv6 import gguf_arch, rwkv56_layout, rwkv56_metadata, rwkv56_transforms
from runtime.convert_rwkv7 import Layout, rwkv7_layout, rwkv7_metadata
from runtime.errors import ModelFileError
from runtime.formats.checkpoint import (
    LN0_FOLDED,
    TIME_DECAY_NEG_EXP,
    TIME_MIX_SQUEEZED,
    V7_LORA_TRANSPOSED,
    Checkpoint,
    open_checkpoint,
)
from runtime.formats.detect import LN_EPS, TOKENIZER_BY_VOCAB, v4_tensor_shapes
from runtime.formats.gguf_file import TensorPlan, write_gguf
from runtime.formats.tensors import LazyTensor
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.quant.codec import quantize
from runtime.quant.gptq import GRID_TYPES, inverse_factor, quantize_gptq
from runtime.quant.mixes import LEGACY_FILE_TYPES, Policy, Target, choose, parse_target
from runtime.quant.native import NonFiniteRowError, RowEncoder, supported
from runtime.quant.scales import first_bad_scale
from runtime.quant.types import DType
from runtime.quant.weighted import quantize_weighted
from runtime.text.gguf_vocab import gguf_tokenizer_metadata
from runtime.threadcount import check_threads, default_threads

FORMAT_VERSION = 1
CHUNK_VALUES = 8 << 20  # values per chunk handed to a thread on the native path (output buffers are reused)
PIECE_BYTES = 256 << 10  # native path: source bytes read and encoded at a time, kept in cache (bench/convert.py)
# values per chunk decoded to float32 on the numpy path: small enough that numpy's temporaries come
# from reused heap memory (8M-value chunks spent 3x the CPU, most of it zeroing fresh pages)
NUMPY_CHUNK_VALUES = 256 << 10
# values per chunk with error feedback (runtime.quant.gptq): its column loop costs the same per call
# whatever the rows, so a few rows per call spent most of the time there (FFN value of 8192 columns,
# 32 → 128 rows: 19 → 13 ms a row)
GPTQ_CHUNK_VALUES = 1 << 20
# matrices quantized with the importance only, without error feedback: the FFN key feeds relu², where the
# matrix's squared output error is not what decides quality (rwkv.cpp's tiny RWKV-7: error feedback on
# ffn.key alone raised the mean KL 2x, on every other matrix lowered it; bench/calibration.py)
NO_ERROR_FEEDBACK = ("ffn.key.weight",)
HASH_WINDOW = 256 << 20  # how far the source hasher may read ahead of conversion (see _Pacer)
FILE_TYPES = LEGACY_FILE_TYPES  # GGUF general.file_type per legacy type (K mixes: Target.file_type)


@dataclass(frozen=True)
class _Weighting:
    """What a calibrated conversion quantizes one matrix with (runtime.quant.weighted, runtime.quant.gptq)."""

    importance: np.ndarray
    factor: np.ndarray | None  # inverse_factor of second_moments; None: the importance alone
    second_moments: np.ndarray | None


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    dtype: DType
    head_dtype: DType
    nbytes: int
    seconds: float
    source_sha256: str
    target: str = ""  # the --type asked for: "Q5_1", "Q4_K_M"


def tensor_types(target: DType | Target, head: DType | None = None) -> dict[str, DType]:
    """Stored type per role for a legacy target ('matrix', 'head', 'emb', 'vector'); for a K mix,
    'matrix' is its base type and 'head' the type of a head whose rows split into super-blocks."""
    t = parse_target(target)
    emb = DType.F32 if t.base is DType.F32 else DType.F16
    if head is None:
        head = choose(t, "head.weight", (1, 256), 1).dtype
    return {"matrix": t.base, "head": head, "emb": emb, "vector": DType.F32}


def _role(name: str, shape: tuple[int, ...]) -> str:
    if name == "head.weight":
        return "head"
    if name == "emb.weight":
        return "emb"
    return "matrix" if len(shape) == 2 else "vector"


def output_plan(ckpt: Checkpoint, target: DType | Target, head: DType | None = None) -> list[TensorPlan]:
    """What the converted file holds: ln0 folded into the embedding, time_* tensors as (C,)."""
    a = ckpt.arch
    policy = Policy(parse_target(target), a.n_layer, head)
    plan = []
    for name, shape in v4_tensor_shapes(a.n_layer, a.n_embd, a.n_vocab, a.n_ffn).items():
        if ".ln0." in name:
            continue
        dtype = DType.F32 if _role(name, shape) == "vector" else policy.matrix(name, shape)
        plan.append(TensorPlan(name, shape, dtype))
    return plan


def sha256_file(
    path: Path, cancel: CancelToken | None = None, block: int = 256 << 10, pace: Callable[[int], None] | None = None
) -> str:
    """Hex sha256 of a file ("" if cancelled). Reads go into one small buffer that stays in cache
    (cheaper than large reads: bench/convert.py --hash). `pace(position)` is called before each read."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        pos = 0
        while True:
            if pace is not None:
                pace(pos)
            if cancel is not None and cancel.cancelled:
                return ""
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            pos += n
    return h.hexdigest()


class _Pacer:
    """Keeps the source hasher at most `window` bytes ahead of the furthest byte conversion has asked for.

    On a cold page cache the hasher then reads the file from disk once, front to back, just ahead of
    the converter, which finds its rows in the cache. Unpaced, the hasher ran gigabytes ahead and
    its pages could be evicted (by the output's) before the converter read them, so parts of the
    source came from disk twice.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.limit = window
        self._cond = threading.Condition()

    def advance(self, offset: int) -> None:
        """The converter is reading up to byte `offset`."""
        if offset + self.window > self.limit:
            with self._cond:
                self.limit = max(self.limit, offset + self.window)
                self._cond.notify_all()

    def release(self) -> None:
        """No more pacing (conversion finished or failed)."""
        self.advance(1 << 62)

    def wait(self, position: int) -> None:
        """Hasher side: block until `position` is inside the window."""
        if position < self.limit:
            return
        with self._cond:
            while position >= self.limit:
                self._cond.wait()


def _source_digest(src: Path, cancel: CancelToken | None, pace: Callable[[int], None] | None = None) -> str:
    if src.is_dir():
        h = hashlib.sha256()
        for p in sorted(src.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0" + sha256_file(p, cancel).encode())
        return h.hexdigest()
    return sha256_file(src, cancel, pace=pace)


class _Transformer:
    """Turns a source tensor's float32 rows into what the output file stores for it."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.fold_ln0 = (
            ckpt.arch.version == "4" and LN0_FOLDED not in ckpt.transforms and "blocks.0.ln0.weight" in ckpt.tensors
        )
        if self.fold_ln0:
            self.ln0_w = ckpt.tensors["blocks.0.ln0.weight"].numpy().reshape(-1)
            self.ln0_b = ckpt.tensors["blocks.0.ln0.bias"].numpy().reshape(-1)
        self.neg_exp_decay = TIME_DECAY_NEG_EXP not in ckpt.transforms

    def is_identity(self, name: str) -> bool:
        """Whether `name`'s values are stored as they are (no transform to apply)."""
        if name == "emb.weight":
            return not self.fold_ln0
        return not (name.endswith(".att.time_decay") and self.neg_exp_decay)

    def __call__(self, name: str, rows: np.ndarray) -> np.ndarray:
        # non-finite inputs are reported by the finite check that follows, not as numpy warnings
        with np.errstate(invalid="ignore", over="ignore"):
            if name == "emb.weight" and self.fold_ln0:
                mean = rows.mean(axis=1, keepdims=True, dtype=np.float32)
                centered = rows - mean
                var = np.mean(centered * centered, axis=1, keepdims=True, dtype=np.float32)
                rows = centered / np.sqrt(var + np.float32(LN_EPS)) * self.ln0_w + self.ln0_b
            elif name.endswith(".att.time_decay") and self.neg_exp_decay:
                rows = -np.exp(rows)
        return np.ascontiguousarray(rows, dtype=np.float32)


def _nonfinite(path: Path, name: str, row: int, source: LazyTensor | None = None) -> ModelFileError:
    """The error for a row of NaN/Inf; when a quantized `source` row has a damaged block scale, it is named."""
    cause = first_bad_scale(source.read_raw_rows(row, row + 1), source.dtype) if source is not None else None
    return ModelFileError(
        path, f"tensor '{name}' contains NaN or Inf values (first in row {row}{': ' + cause if cause else ''})"
    )


def _check_finite(path: Path, name: str, rows: np.ndarray, first_row: int, source: LazyTensor | None = None) -> None:
    if not np.isfinite(rows).all():
        raise _nonfinite(path, name, int(np.argwhere(~np.isfinite(rows))[0][0]) + first_row, source)


_F16_MAX = 65504.0
# byte offsets of a block's float16 scale (and minimum) fields
_SCALE_OFFSETS: dict[DType, tuple[int, ...]] = {
    DType.Q4_0: (0,), DType.Q5_0: (0,), DType.Q8_0: (0,), DType.Q4_1: (0, 2), DType.Q5_1: (0, 2),
    DType.Q2_K: (80, 82), DType.Q3_K: (108,), DType.Q4_K: (0, 2), DType.Q5_K: (0, 2), DType.Q6_K: (208,),
}


def _first_overflow(encoded: bytes | np.ndarray, dtype: DType, n_cols: int) -> tuple[int, int] | None:
    """(row, first column of the block) of the first float16 value or block scale in encoded rows
    that is not finite: a finite source value too large for the target type; None if all fit."""
    if dtype is DType.F32:
        return None
    raw = np.frombuffer(encoded, np.uint8) if isinstance(encoded, bytes) else encoded.reshape(-1).view(np.uint8)
    if dtype is DType.F16:
        bad = ~np.isfinite(raw.view("<f2"))
    else:
        blocks = raw.reshape(-1, dtype.block_bytes)
        fields = [np.ascontiguousarray(blocks[:, at : at + 2]).view("<f2") for at in _SCALE_OFFSETS[dtype]]
        bad = ~np.isfinite(np.concatenate(fields, axis=1)).all(axis=1)
    if not bad.any():
        return None
    row, block = divmod(int(np.argmax(bad)), n_cols // dtype.block_size)
    return row, block * dtype.block_size


def _overflow_error(path: Path, out: TensorPlan, row: int, values: np.ndarray) -> ModelFileError:
    """The error for a row of `out` whose `values` (a block, or one value) overflow its type."""
    value = float(values[int(np.argmax(np.abs(values)))])
    if out.dtype is DType.F16:
        limit = f"float16's largest value is {_F16_MAX:g}"
    else:
        limit = f"a {out.dtype.name} block stores its scale as a float16 (largest {_F16_MAX:g})"
    option = "--head-type f32" if out.name == "head.weight" else "--type f32"
    return ModelFileError(
        path,
        f"tensor '{out.name}' row {row} holds {value:.6g}, which does not fit {out.dtype.name}: {limit}. "
        f"Convert with {option} to keep such values (or check the source with rwkv-tui inspect --verify)",
    )


def _native(tensor: LazyTensor, out: TensorPlan, transform: _Transformer) -> bool:
    """Whether a matrix goes straight from its stored bytes to the output type in native code."""
    return (
        os.environ.get("RWKV_TUI_NATIVE_QUANTIZE", "1") != "0"
        and len(out.shape) == 2
        and tensor.n_cols == out.shape[-1]
        and transform.is_identity(out.name)
        and supported(tensor.dtype, out.dtype, tensor.n_cols)
    )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dtype: DType | str | Target,
    *,
    head_dtype: DType | str | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    threads: int | None = None,
    source_sha256: str | None = None,
    calibrate: str | os.PathLike[str] | None = None,
) -> ConvertResult:
    """Convert `src` to a GGUF file at `dst` with layer matrices stored as `dtype` (a type or a K-quant
    mix such as "q4_k_m": runtime.quant.mixes chooses each tensor's type).

    Nothing is left at `dst` if this fails or is interrupted. `source_sha256`, when the caller
    already knows it (a verified download), skips hashing the source. `calibrate`, a text file, turns
    on importance-weighted quantization (runtime.quant.calibrate: the source model reads the text first).
    """
    t0 = time.perf_counter()
    check_threads(threads)
    src, dst = Path(src), Path(dst)
    target = parse_target(dtype)
    head = DType.parse(head_dtype) if isinstance(head_dtype, str) else head_dtype
    ckpt = open_checkpoint(src)
    v7 = ckpt.arch.version == "7"
    v56 = ckpt.arch.version in ("5.2", "6")
    policy = Policy(target, ckpt.arch.n_layer, head)
    if v7:
        layout = rwkv7_layout(ckpt, policy)
    elif v56:
        layout = rwkv56_layout(ckpt, policy)
    else:
        layout = Layout(output_plan(ckpt, target, head))
    plan = layout.plan
    out_bytes = sum(t.nbytes for t in plan) + (1 << 20)
    dst_dir = dst.parent if str(dst.parent) else Path(".")
    if not dst_dir.is_dir():
        raise FileNotFoundError(f"output folder {dst_dir} does not exist")
    check_free_space(dst_dir, out_bytes)
    cancel = cancel or CancelToken()
    calibration = None
    if calibrate is not None:
        from runtime.quant.calibrate import calibrate as read_calibration

        calibration = read_calibration(ckpt, calibrate, progress=progress, cancel=cancel,
                                       wants_moments=lambda name: not name.endswith(NO_ERROR_FEEDBACK))
    threads = check_threads(threads) or default_threads()

    digest: list[str] = [source_sha256 or ""]
    hasher = None
    stop_hashing = CancelToken()
    pacer = _Pacer(HASH_WINDOW) if not source_sha256 and not src.is_dir() else None
    if not source_sha256:
        def run_hash() -> None:
            digest[0] = _source_digest(src, stop_hashing, pacer.wait if pacer else None)

        hasher = threading.Thread(target=run_hash, name="sha256", daemon=True)
        hasher.start()

    transform = _Transformer(ckpt)

    def source(out: TensorPlan) -> LazyTensor:
        return ckpt.tensors[layout.sources.get(out.name, out.name)]

    total = sum(layout.built[t.name][1] if t.name in layout.built else source(t).nbytes for t in plan)
    done = 0
    progress(Progress("converting", 0, total))

    scratch = threading.local()
    spare: list[np.ndarray] = []  # output buffers of written chunks, reused (fresh memory costs page faults)

    def encode_native(tensor: LazyTensor, out: TensorPlan, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) read piece by piece into a per-thread buffer and encoded in native code."""
        buf = getattr(scratch, "buf", None)
        if buf is None or len(buf) < tensor.row_bytes:
            buf = scratch.buf = bytearray(max(PIECE_BYTES, tensor.row_bytes))
            scratch.addr = np.frombuffer(buf, np.uint8).ctypes.data
        encoder = RowEncoder(tensor.dtype, out.dtype, tensor.n_cols)
        size = (stop - start) * encoder.row_out
        try:
            whole = spare.pop()
        except IndexError:
            whole = None
        if whole is None or whole.size < size:
            whole = np.empty(size, np.uint8)
        result = whole[:size]
        base = result.ctypes.data
        step = max(1, len(buf) // tensor.row_bytes)
        for s in range(start, stop, step):
            e = min(s + step, stop)
            tensor.read_stored_into(s, e, buf)
            try:
                encoder.encode_at(scratch.addr, e - s, base + (s - start) * encoder.row_out)
            except NonFiniteRowError as err:
                raise _nonfinite(ckpt.path, out.name, s + err.row) from None
        return result

    def weighting_of(out: TensorPlan) -> _Weighting | None:
        """The calibration's importance for `out`'s input columns when its type uses one, with the
        error-feedback factor (runtime.quant.gptq) when the input's second moments were measured. Called
        once per tensor, in order: the calibration measures each layer when the conversion gets to it."""
        if calibration is None or out.dtype not in GRID_TYPES:
            return None
        imp, moments = calibration.statistics.of(layout.sources.get(out.name, out.name))
        if imp is None or imp.size != out.shape[-1]:
            return None
        return _Weighting(imp, inverse_factor(moments) if moments is not None else None, moments)

    def encode(tensor: LazyTensor, out: TensorPlan, start: int, stop: int, native: bool,
               weighting: _Weighting | None) -> bytes | np.ndarray:
        if pacer is not None:
            pacer.advance(tensor.offset + stop * tensor.row_bytes)
        if native:
            data = encode_native(tensor, out, start, stop)
        else:
            rows = transform(out.name, tensor.read_rows(start, stop))
            _check_finite(ckpt.path, out.name, rows, start, tensor)
            with np.errstate(over="ignore"):  # reported by the overflow check that follows
                rows = rows.reshape(stop - start, out.shape[-1])
                if weighting is not None and weighting.factor is not None:
                    data = quantize_gptq(rows, out.dtype, weighting.importance, weighting.factor,
                                         weighting.second_moments).tobytes()
                else:
                    imp = weighting.importance if weighting is not None else None
                    data = quantize_weighted(rows, out.dtype, imp).tobytes()
        n_cols = out.shape[-1]
        overflow = _first_overflow(data, out.dtype, n_cols)
        if overflow is not None:
            row, col = overflow
            source = transform(out.name, tensor.read_rows(start + row, start + row + 1)).reshape(-1)
            raise _overflow_error(ckpt.path, out, start + row, source[col : col + out.dtype.block_size])
        return data

    pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convert")

    def chunks(out: TensorPlan) -> Iterator[bytes | memoryview]:
        nonlocal done
        if out.name in layout.built:  # small tensors made whole from their sources
            make, nbytes = layout.built[out.name]
            rows = np.ascontiguousarray(make(), dtype=np.float32).reshape(-1, out.shape[-1])
            _check_finite(ckpt.path, out.name, rows, 0)
            done += nbytes
            progress(Progress("converting", done, total))
            yield quantize(rows, out.dtype).tobytes()
            return
        tensor = source(out)
        n_rows, n_cols = tensor.n_rows, tensor.n_cols
        if tensor.n_rows * tensor.n_cols != int(np.prod(out.shape)):
            raise ModelFileError(ckpt.path, f"tensor '{out.name}' has shape {tensor.shape}, expected {out.shape}")
        if len(out.shape) == 1 and n_rows != 1:  # a (1, 1, C) source stored as C rows of 1
            n_rows, n_cols = 1, tensor.n_rows * tensor.n_cols
        if len(out.shape) == 1:
            rows = transform(out.name, tensor.numpy().reshape(1, -1))
            _check_finite(ckpt.path, out.name, rows, 0)
            done += tensor.nbytes
            progress(Progress("converting", done, total))
            yield quantize(rows, out.dtype).tobytes()
            return
        weighting = weighting_of(out)
        native = _native(tensor, out, transform) and weighting is None
        chunk = CHUNK_VALUES if native else NUMPY_CHUNK_VALUES
        if weighting is not None and weighting.factor is not None:
            chunk = GPTQ_CHUNK_VALUES
        step = max(1, min(n_rows, chunk // max(1, n_cols)))
        pending: deque[tuple[cf.Future[bytes | np.ndarray], int]] = deque()
        starts = iter(range(0, n_rows, step))
        for start in starts:
            pending.append((pool.submit(encode, tensor, out, start, min(start + step, n_rows), native,
                                        weighting), start))
            if len(pending) >= 2 * threads:
                break
        while pending:
            fut, start = pending.popleft()
            data = fut.result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append((pool.submit(encode, tensor, out, nxt, min(nxt + step, n_rows), native,
                                            weighting), nxt))
            cancel.raise_if_cancelled()
            done += (min(start + step, n_rows) - start) * tensor.row_bytes
            progress(Progress("converting", done, total))
            if isinstance(data, bytes):
                yield data
            else:
                yield memoryview(data)
                # write_gguf has written it (it writes each chunk before asking for the next): reuse the memory
                spare.append(data if data.base is None else data.base)

    a = ckpt.arch
    metadata = [
        ("general.name", src.name.removesuffix(".pth")),
        ("general.file_type", target.file_type),
        ("general.quantization_version", 2),
    ]
    if v7:
        metadata += rwkv7_metadata(ckpt) + gguf_tokenizer_metadata(a.n_vocab, ckpt.metadata)
        transforms = [V7_LORA_TRANSPOSED]
    elif v56:
        metadata += rwkv56_metadata(ckpt) + gguf_tokenizer_metadata(a.n_vocab, ckpt.metadata)
        transforms = rwkv56_transforms(ckpt)
    else:
        metadata += [
            ("rwkv4.block_count", a.n_layer),
            ("rwkv4.embedding_length", a.n_embd),
            ("rwkv4.feed_forward_length", a.n_ffn),
            ("rwkv4.vocab_size", a.n_vocab),
            ("rwkv4.layer_norm_epsilon", LN_EPS),
            ("tokenizer.ggml.model", TOKENIZER_BY_VOCAB.get(a.n_vocab, "none")),
        ]
        transforms = sorted({TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED, LN0_FOLDED})
    metadata += [
        ("rwkv_tui.format_version", FORMAT_VERSION),
        ("rwkv_tui.source.file_name", src.name),
        ("rwkv_tui.source.format", ckpt.source_format),
        ("rwkv_tui.source.sha256", source_sha256 or SHA_PLACEHOLDER),
        ("rwkv_tui.transforms", transforms),
        ("rwkv_tui.quant.target", target.name),
        ("rwkv_tui.quant.matrices", target.base.name),
        ("rwkv_tui.quant.head", plan[-1].dtype.name),
        ("rwkv_tui.quant.emb", plan[0].dtype.name),
        ("rwkv_tui.quant.vectors", DType.F32.name),
    ]
    if calibration is not None:
        metadata += [
            ("rwkv_tui.calibration.text", calibration.text_name),
            ("rwkv_tui.calibration.sha256", calibration.text_sha256),
            ("rwkv_tui.calibration.tokens", calibration.n_tokens),
        ]
    try:
        with atomic_output(dst, drop_cache=True) as f:
            header_end = write_gguf(f, "rwkv7" if v7 else gguf_arch(ckpt) if v56 else "rwkv4", metadata, plan, chunks)
            if hasher is not None:  # the digest was computed alongside: fill its slot in the header
                if pacer is not None:
                    pacer.release()
                hasher.join()
                cancel.raise_if_cancelled()
                _patch_sha256(f, header_end, digest[0])
    finally:
        stop_hashing.cancel()
        if pacer is not None:
            pacer.release()
        pool.shutdown(wait=True, cancel_futures=True)
    progress(Progress("converting", total, total))
    return ConvertResult(
        dst, target.base, plan[-1].dtype, dst.stat().st_size, time.perf_counter() - t0, digest[0], target.name
    )


SHA_PLACEHOLDER = "0" * 64


def _patch_sha256(f, header_end: int, digest: str) -> None:
    """Overwrite the placeholder value of rwkv_tui.source.sha256 in the header with `digest`."""
    key = b"rwkv_tui.source.sha256"
    needle = len(key).to_bytes(8, "little") + key + (8).to_bytes(4, "little") + (64).to_bytes(8, "little")
    f.flush()
    f.seek(0)
    head = f.read(header_end)
    at = head.find(needle + SHA_PLACEHOLDER.encode())
    if at < 0 or len(digest) != 64:
        raise RuntimeError("internal error: no slot for the source sha256 in the header")
    f.seek(at + len(needle))
    f.write(digest.encode())
    f.seek(0, os.SEEK_END)
