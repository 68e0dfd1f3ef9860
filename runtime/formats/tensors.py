"""Lazy tensors: a name, a shape, a type and where the bytes lie in a file.

Readers never load a checkpoint into memory. They validate each tensor's span against the file's
size and hand out `LazyTensor`s; conversion then reads them a block of rows at a time with `pread`
(page cache, not process memory), and the runtime memory-maps the same spans.
Shapes are in numpy order: the last dimension is the contiguous one, a matrix is (rows, cols).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import ModelFileError
from runtime.quant.types import DType


class FileHandle:
    """One read-only descriptor shared by all tensors of a file; `pread` is safe across threads.

    Given `mapping` (the file mapped whole, by the runtime's loader), `pread` copies from it instead
    of reading the descriptor: the page cache then fills through the mapping, in the large folios
    the mapping asked for, not in the small ones plain reads leave (runtime/pagecache.py)."""

    def __init__(self, path: str | os.PathLike[str], mapping: mmap.mmap | None = None) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise ModelFileError(self.path, f"cannot open: {e.strerror}") from e
        self.size = os.fstat(self.fd).st_size
        self.mapping = mapping if mapping is not None and len(mapping) == self.size else None
        self._lock = threading.Lock()

    def check_span(self, offset: int, nbytes: int) -> None:
        """ModelFileError unless bytes [offset, offset + nbytes) lie inside the file (a damaged header
        can give a negative offset or length, which the OS would refuse with a bare OSError)."""
        if offset < 0 or nbytes < 0:
            raise ModelFileError(self.path, f"damaged file: a read of {nbytes} bytes at offset {offset}")
        if offset + nbytes > self.size:
            raise ModelFileError(self.path, f"file is truncated: wanted {nbytes} bytes at offset {offset}")

    def pread(self, offset: int, nbytes: int) -> bytes:
        """Exactly `nbytes` from `offset`, or ModelFileError if the file is shorter."""
        self.check_span(offset, nbytes)
        if self.mapping is not None:
            return self.mapping[offset : offset + nbytes]
        chunks = []
        got = 0
        while got < nbytes:
            b = os.pread(self.fd, min(nbytes - got, 1 << 30), offset + got)
            if not b:
                raise ModelFileError(self.path, f"file is truncated: wanted {nbytes} bytes at offset {offset}")
            chunks.append(b)
            got += len(b)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill the writable buffer `buf` with the bytes at `offset`, or ModelFileError if the file is shorter.

        With a small buffer that is reused, the caller consumes the bytes while they are still in the CPU
        cache, and no fresh memory has to be faulted in.
        """
        got, nbytes = 0, len(buf)
        self.check_span(offset, nbytes)
        while got < nbytes:
            n = os.preadv(self.fd, [buf[got:]], offset + got)
            if not n:
                raise ModelFileError(self.path, f"file is truncated: wanted {nbytes} bytes at offset {offset}")
            got += n

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@dataclass
class LazyTensor:
    """A tensor whose bytes stay in the file until asked for."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    file: FileHandle
    offset: int
    nbytes: int = field(default=-1)

    def __post_init__(self) -> None:
        expected = self.dtype.nbytes(self.shape) if self.shape else self.dtype.row_bytes(1)
        if self.nbytes < 0:
            self.nbytes = expected
        if self.nbytes != expected:
            raise ModelFileError(
                self.file.path,
                f"tensor '{self.name}' of shape {self.shape} and type {self.dtype.name} needs "
                f"{expected} bytes but the file gives it {self.nbytes}",
            )
        if self.offset < 0 or self.offset + self.nbytes > self.file.size:
            raise ModelFileError(
                self.file.path,
                f"file is truncated: tensor '{self.name}' needs bytes {self.offset}..{self.offset + self.nbytes} "
                f"but the file has {self.file.size}",
            )

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n

    @property
    def n_cols(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.dtype.row_bytes(self.n_cols)

    def read_raw_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as stored: float32/float16 arrays, uint16 for bf16, uint8 blocks otherwise.

        The result has shape (stop - start, n_cols) for float types and (stop - start, row_bytes)
        for quantized ones.
        """
        stop = self.n_rows if stop is None else stop
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows {start}..{stop} out of range for '{self.name}' with {self.n_rows} rows")
        data = self.file.pread(self.offset + start * self.row_bytes, (stop - start) * self.row_bytes)
        n = stop - start
        if self.dtype is DType.F32:
            return np.frombuffer(data, dtype="<f4").reshape(n, self.n_cols)
        if self.dtype is DType.F16:
            return np.frombuffer(data, dtype="<f2").reshape(n, self.n_cols)
        if self.dtype is DType.BF16:
            return np.frombuffer(data, dtype="<u2").reshape(n, self.n_cols)
        return np.frombuffer(data, dtype=np.uint8).reshape(n, self.row_bytes)

    def read_stored_into(self, start: int, stop: int, buf: bytearray | memoryview) -> memoryview:
        """Rows [start, stop) as stored (raw little-endian bytes) read into `buf`; returns the filled part."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows {start}..{stop} out of range for '{self.name}' with {self.n_rows} rows")
        view = memoryview(buf).cast("B")[: (stop - start) * self.row_bytes]
        if len(view) < (stop - start) * self.row_bytes:
            raise ValueError(f"buffer of {len(view)} bytes is too small for {stop - start} rows of '{self.name}'")
        self.file.pread_into(self.offset + start * self.row_bytes, view)
        return view

    def read_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) decoded to float32, shape (stop - start, n_cols)."""
        from runtime.quant.codec import to_float32

        return to_float32(self.read_raw_rows(start, stop), self.dtype)

    def numpy(self) -> np.ndarray:
        """The whole tensor as float32 in its own shape (for small tensors, tests and tools)."""
        return self.read_rows().reshape(self.shape)
