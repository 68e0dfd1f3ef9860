"""The recurrent state of an RWKV model: the whole context in a few rows of n_embd floats per layer.

Each architecture lays out its rows (runtime/model/arch/: RWKV-4 has 5 per layer, RWKV-7 2 + N).
A `State` is immutable by convention (the forward pass never writes into the one it is given, only,
when asked, into one given back as no longer needed: `Model.forward(…, into=…)`), so keeping one per
conversation turn is safe. It carries the architecture and the fingerprint of the
model that made it; `to_bytes`/`from_bytes` give a self-checking serialisation (magic, version,
shape, fingerprint, sha256 of the data, architecture) so a saved state is validated before any
native code reads it. States of format 1 and 2 (before the architecture was recorded) are RWKV-4.

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
_HEADER_V2 = struct.Struct("<8sIIII64s32s")  # magic, version, rows, cols, n_logits, fingerprint, sha256(data+logits)
_HEADER = struct.Struct("<8sIIII64s32s8s")  # as version 2, then the architecture ("rwkv4" … "rwkv7"; NUL-padded)
FORMAT_VERSION = 3
# Rows per layer where the architecture fixes them (RWKV-7's depend on the head size).
_ROWS_PER_LAYER = {"rwkv4": 5}
ARCHITECTURES = ("rwkv4", "rwkv5", "rwkv6", "rwkv7")
MAX_LOGITS = 1 << 20
MAX_FLOATS = 1 << 28
# No step makes a state value or logit near this (pp starts at -1e30, the rest stays far smaller); a
# saved state beyond it is damage that would turn into NaN logits on the next step.
MAX_ABS = 1e37


class StateError(RwkvError, ValueError):
    """A saved state is malformed, or belongs to another model."""


@dataclass(frozen=True, eq=False)
class State:
    """Per layer, the architecture's rows of n_embd float32 (RWKV-4: att_xx, aa, bb, pp, ffn_xx)."""

    data: np.ndarray
    fingerprint: str
    logits: np.ndarray | None = None
    arch: str = "rwkv4"

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def copy(self) -> State:
        logits = None if self.logits is None else self.logits.copy()
        return State(self.data.copy(), self.fingerprint, logits, self.arch)

    def without_logits(self) -> State:
        return State(self.data, self.fingerprint, None, self.arch)

    def to_bytes(self) -> bytes:
        data = np.ascontiguousarray(self.data, dtype="<f4").tobytes()
        if self.logits is not None:
            data += np.ascontiguousarray(self.logits, dtype="<f4").tobytes()
        rows, cols = self.data.shape
        n_logits = 0 if self.logits is None else int(self.logits.size)
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, rows, cols, n_logits, self.fingerprint.encode("ascii"),
            hashlib.sha256(data).digest(), self.arch.encode("ascii"),
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
        elif version == 2 and len(blob) >= _HEADER_V2.size:
            _, _, rows, cols, n_logits, fp, digest = _HEADER_V2.unpack_from(blob)
            data = blob[_HEADER_V2.size :]
        elif version == FORMAT_VERSION and len(blob) >= _HEADER.size:
            _, _, rows, cols, n_logits, fp, digest, arch_raw = _HEADER.unpack_from(blob)
            data = blob[_HEADER.size :]
        else:
            raise StateError(f"{source}: state format version {version} is not supported")
        arch = "rwkv4" if version < 3 else arch_raw.rstrip(b"\0").decode("ascii", "replace")
        if arch not in ARCHITECTURES:
            raise StateError(f"{source}: a state of an unknown architecture ({arch!r})")
        per_layer = _ROWS_PER_LAYER.get(arch, 1)
        if rows == 0 or cols == 0 or rows % per_layer or rows * cols > MAX_FLOATS or n_logits > MAX_LOGITS:
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
        return cls(arr, fingerprint, logits, arch)
