"""The recurrent state of an RWKV-4 model: the whole context in 5 × n_layer × n_embd floats.

A `State` is immutable by convention (the forward pass never writes into the one it is given), so
keeping one per conversation turn is safe. It carries the fingerprint of the model that made it;
`to_bytes`/`from_bytes` give a self-checking serialisation (magic, version, shape, fingerprint,
sha256 of the data) so a saved state is validated before any native code reads it.

A state may also carry the logits the model produced with it (the distribution of the next token).
Saved with a turn, they let a reply be generated or regenerated from the saved state without
re-reading a single token.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from runtime.errors import RwkvError

MAGIC = b"RWKVST01"
_HEADER_V1 = struct.Struct("<8sIII64s32s")  # magic, version, rows, cols, fingerprint, sha256(data)
_HEADER = struct.Struct("<8sIIII64s32s")  # magic, version, rows, cols, n_logits, fingerprint, sha256(data+logits)
FORMAT_VERSION = 2
MAX_LOGITS = 1 << 20
MAX_FLOATS = 1 << 28
# No step makes a state value or logit near this (pp starts at -1e30, the rest stays far smaller); a
# saved state beyond it is damage that would turn into NaN logits on the next step.
MAX_ABS = 1e37


class StateError(RwkvError, ValueError):
    """A saved state is malformed, or belongs to another model."""


@dataclass(frozen=True, eq=False)
class State:
    """Per layer, 5 rows of n_embd float32: att_xx, aa, bb, pp, ffn_xx (the official order)."""

    data: np.ndarray
    fingerprint: str
    logits: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def copy(self) -> State:
        return State(self.data.copy(), self.fingerprint, None if self.logits is None else self.logits.copy())

    def without_logits(self) -> State:
        return State(self.data, self.fingerprint)

    def to_bytes(self) -> bytes:
        data = np.ascontiguousarray(self.data, dtype="<f4").tobytes()
        if self.logits is not None:
            data += np.ascontiguousarray(self.logits, dtype="<f4").tobytes()
        rows, cols = self.data.shape
        n_logits = 0 if self.logits is None else int(self.logits.size)
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, rows, cols, n_logits, self.fingerprint.encode("ascii"),
            hashlib.sha256(data).digest(),
        )
        return header + data

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "saved state") -> State:
        """Parse and check a serialised state; `source` names it in error messages."""
        if len(blob) < _HEADER_V1.size:
            raise StateError(f"{source}: too short to be a state ({len(blob)} bytes)")
        magic, version = struct.unpack_from("<8sI", blob)
        if magic != MAGIC:
            raise StateError(f"{source}: not an rwkv-tui state (bad magic)")
        if version == 1:
            _, _, rows, cols, fp, digest = _HEADER_V1.unpack_from(blob)
            n_logits, data = 0, blob[_HEADER_V1.size :]
        elif version == FORMAT_VERSION and len(blob) >= _HEADER.size:
            _, _, rows, cols, n_logits, fp, digest = _HEADER.unpack_from(blob)
            data = blob[_HEADER.size :]
        else:
            raise StateError(f"{source}: state format version {version} is not supported")
        if rows == 0 or cols == 0 or rows % 5 or rows * cols > MAX_FLOATS or n_logits > MAX_LOGITS:
            raise StateError(f"{source}: implausible state shape {rows} × {cols} ({n_logits} logits)")
        if len(data) != (rows * cols + n_logits) * 4:
            raise StateError(
                f"{source}: holds {len(data)} bytes of data, expected {(rows * cols + n_logits) * 4}"
            )
        if hashlib.sha256(data).digest() != digest:
            raise StateError(f"{source}: checksum mismatch (the state is corrupt)")
        try:
            fingerprint = fp.decode("ascii")
        except UnicodeDecodeError:
            raise StateError(f"{source}: bad model fingerprint") from None
        values = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise StateError(f"{source}: contains NaN or infinite values")
        if values.size and float(np.abs(values).max()) > MAX_ABS:
            raise StateError(f"{source}: holds values beyond ±{MAX_ABS:g}, which no model step makes (corrupt)")
        arr = values[: rows * cols].reshape(rows, cols)
        logits = values[rows * cols :] if n_logits else None
        return cls(arr, fingerprint, logits)
