"""The recurrent state of an RWKV-4 model: the whole context in 5 × n_layer × n_embd floats.

A `State` is immutable by convention (the forward pass never writes into the one it is given), so
keeping one per conversation turn is safe. It carries the fingerprint of the model that made it;
`to_bytes`/`from_bytes` give a self-checking serialisation (magic, version, shape, fingerprint,
sha256 of the data) so a saved state is validated before any native code reads it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from runtime.errors import RwkvError

MAGIC = b"RWKVST01"
_HEADER = struct.Struct("<8sIII64s32s")  # magic, version, rows, cols, fingerprint, sha256(data)
FORMAT_VERSION = 1
MAX_FLOATS = 1 << 28


class StateError(RwkvError, ValueError):
    """A saved state is malformed, or belongs to another model."""


@dataclass(frozen=True, eq=False)
class State:
    """Per layer, 5 rows of n_embd float32: att_xx, aa, bb, pp, ffn_xx (the official order)."""

    data: np.ndarray
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def copy(self) -> State:
        return State(self.data.copy(), self.fingerprint)

    def to_bytes(self) -> bytes:
        data = np.ascontiguousarray(self.data, dtype="<f4").tobytes()
        rows, cols = self.data.shape
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, rows, cols, self.fingerprint.encode("ascii"), hashlib.sha256(data).digest()
        )
        return header + data

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "saved state") -> State:
        """Parse and check a serialised state; `source` names it in error messages."""
        if len(blob) < _HEADER.size:
            raise StateError(f"{source}: too short to be a state ({len(blob)} bytes)")
        magic, version, rows, cols, fp, digest = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise StateError(f"{source}: not an rwkv-tui state (bad magic)")
        if version != FORMAT_VERSION:
            raise StateError(f"{source}: state format version {version} is not supported")
        if rows == 0 or cols == 0 or rows % 5 or rows * cols > MAX_FLOATS:
            raise StateError(f"{source}: implausible state shape {rows} × {cols}")
        data = blob[_HEADER.size :]
        if len(data) != rows * cols * 4:
            raise StateError(f"{source}: holds {len(data)} bytes of data, expected {rows * cols * 4}")
        if hashlib.sha256(data).digest() != digest:
            raise StateError(f"{source}: checksum mismatch (the state is corrupt)")
        try:
            fingerprint = fp.decode("ascii")
        except UnicodeDecodeError:
            raise StateError(f"{source}: bad model fingerprint") from None
        arr = np.frombuffer(data, dtype="<f4").reshape(rows, cols).astype(np.float32)
        if not np.isfinite(arr).all():
            raise StateError(f"{source}: contains NaN or infinite values")
        return cls(arr, fingerprint)
