"""Native quantization of stored rows: bf16/f16/f32 bytes straight to ggml blocks or F16/F32 values.

    data = quantize_stored(raw, DType.BF16, DType.Q5_1, n_cols)   # uint8 (n_rows, row_bytes)
    enc = RowEncoder(DType.BF16, DType.Q5_1, n_cols); enc.encode_at(src_addr, n_rows, dst_addr)

The bytes are identical to `codec.quantize(to_float32(raw), dst)`, with NaN/Inf detection on the way:
a non-finite value raises `NonFiniteRowError` carrying its row. One ctypes call per piece of rows
(ctypes releases the GIL, so a thread pool runs pieces in parallel); no float32 copy is made.
The kernels (`runtime/jit/kernels/quantize.py`) are compiled on first use of each (source, target)
pair, through the on-disk object cache. The few blocks the kernel leaves to numpy (denormal or
overflowing scales, zero extremes of mixed sign: see the kernel module) are re-encoded here with
codec.py, so they match it on any platform.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir

from runtime.errors import RwkvError
from runtime.jit.kernels.irhelpers import native_half
from runtime.jit.kernels.quantize import SOURCES, TARGETS, emit_quantize, kernel_name
from runtime.jit.shared import shared_function
from runtime.quant.codec import QK, quantize, to_float32
from runtime.quant.types import DType

__all__ = ["SOURCES", "TARGETS", "NonFiniteRowError", "RowEncoder", "quantize_stored", "supported"]

ODD_CAPACITY = 1024  # blocks per call re-encoded one by one; beyond that the whole call goes to codec.py
_CTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
)
_STORED = {DType.BF16: np.dtype("<u2"), DType.F16: np.dtype("<f2"), DType.F32: np.dtype("<f4")}
_NATIVE_HALF: bool | None = None


class NonFiniteRowError(RwkvError, ValueError):
    """A row holds NaN or an infinity; `row` counts from the first row of the call."""

    def __init__(self, row: int) -> None:
        super().__init__(f"NaN or Inf values in row {row}")
        self.row = row


def supported(src: DType, dst: DType, n_cols: int) -> bool:
    """Whether `quantize_stored` handles rows of `n_cols` values stored as `src`, written as `dst`."""
    if src not in SOURCES or dst not in TARGETS or n_cols <= 0:
        return False
    return not dst.is_quantized or n_cols % QK == 0


def _native_half() -> bool:
    global _NATIVE_HALF
    if _NATIVE_HALF is None:
        _NATIVE_HALF = native_half()
    return _NATIVE_HALF


def _kernel(src: DType, dst: DType, native: bool) -> ctypes._CFuncPtr:
    def build() -> ir.Module:
        module = ir.Module(name=kernel_name(src, dst))
        emit_quantize(module, src, dst, native)
        return module

    return shared_function(("quantize", src, dst, native), build, kernel_name(src, dst), _CTYPE)


def _as_bytes(raw: object) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        if not raw.flags.c_contiguous:
            raise ValueError("quantize_stored needs contiguous rows")
        return raw.reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8)


def _at(addr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), np.uint8)


class RowEncoder:
    """Encodes rows of `n_cols` values stored as `src` into `dst`; one instance per thread.

    `encode` takes and returns arrays; `encode_at` takes raw addresses, for callers that encode many
    small pieces of one buffer (it costs about a microsecond of Python per call).
    """

    def __init__(self, src: DType, dst: DType, n_cols: int, *, native_half_conversion: bool | None = None) -> None:
        src, dst = DType(src), DType(dst)
        if not supported(src, dst, n_cols):
            raise ValueError(f"no native conversion of rows of {n_cols} {src.name} values to {dst.name}")
        self.src, self.dst, self.n_cols = src, dst, n_cols
        self.row_in = n_cols * src.block_bytes
        self.row_out = dst.row_bytes(n_cols)
        native = _native_half() if native_half_conversion is None else native_half_conversion
        self._fn = _kernel(src, dst, native)
        self._odd = np.empty(ODD_CAPACITY, np.int64)
        self._n_odd = np.zeros(1, np.int64)
        self._odd_addr = self._odd.ctypes.data
        self._n_odd_addr = self._n_odd.ctypes.data

    def encode_at(self, src_addr: int, n_rows: int, dst_addr: int) -> None:
        """Encode `n_rows` rows from address `src_addr` (n_rows·row_in readable bytes) to `dst_addr`
        (n_rows·row_out writable bytes). The caller keeps both buffers alive. NonFiniteRowError on NaN/Inf."""
        bad = self._fn(src_addr, dst_addr, n_rows, self.n_cols, self._odd_addr, ODD_CAPACITY, self._n_odd_addr)
        if bad >= 0:
            raise NonFiniteRowError(int(bad))
        count = int(self._n_odd[0])
        if count:
            self._reencode(_at(src_addr, n_rows * self.row_in), _at(dst_addr, n_rows * self.row_out), count)

    def _reencode(self, data: np.ndarray, out: np.ndarray, count: int) -> None:
        """Blocks the kernel listed (or all of them, if it listed too many) through codec.py."""
        values = data.view(_STORED[self.src])
        if count > ODD_CAPACITY:
            fixed = quantize(to_float32(values.reshape(-1, self.n_cols), self.src), self.dst)
            out[:] = fixed.view(np.uint8).reshape(-1)
            return
        idx = self._odd[:count]
        fixed = quantize(to_float32(values.reshape(-1, QK)[idx], self.src), self.dst)
        out.reshape(-1, self.dst.block_bytes)[idx] = fixed.view(np.uint8)

    def encode(self, raw: bytes | bytearray | memoryview | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n_rows, row_out) for the rows in `raw` (see `quantize_stored`)."""
        data = _as_bytes(raw)
        if data.size % self.row_in:
            raise ValueError(
                f"{data.size} bytes are not a whole number of rows of {self.n_cols} {self.src.name} values"
            )
        n_rows = data.size // self.row_in
        size = n_rows * self.row_out
        if out is None:
            out = np.empty(size, np.uint8)
        elif out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable or out.size < size:
            raise ValueError(f"out must be a writable contiguous uint8 array of at least {size} bytes")
        result = out.reshape(-1)[:size].reshape(n_rows, self.row_out)
        if n_rows:
            self.encode_at(data.ctypes.data, n_rows, result.ctypes.data)
        return result


def quantize_stored(
    raw: bytes | bytearray | memoryview | np.ndarray,
    src: DType,
    dst: DType,
    n_cols: int,
    *,
    out: np.ndarray | None = None,
    native_half_conversion: bool | None = None,
) -> np.ndarray:
    """Encode rows of `n_cols` values stored as `src` (little-endian bytes in `raw`) as `dst`.

    Returns uint8 (n_rows, dst.row_bytes(n_cols)): the bytes `codec.quantize` gives for the same
    values (for F16/F32 targets, the float16/float32 values' bytes). `out`, if given, is a writable
    uint8 array of at least that many bytes and receives them. Raises NonFiniteRowError for the
    first row holding NaN or Inf. `native_half_conversion` forces the half-float code path (tests).
    """
    return RowEncoder(src, dst, n_cols, native_half_conversion=native_half_conversion).encode(raw, out)
