"""What an evaluation produces: one `EvalResult` per model file, gathered in an `EvalReport`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from runtime.errors import RwkvError


class EvalError(RwkvError, ValueError):
    """The evaluation cannot run as asked: mismatched models, a quantized reference, too few tokens."""


@dataclass
class EvalResult:
    """Figures of one model file against the reference, over `positions` scored positions.

    `path` is None for a temporary copy (`evaluate_formats`). Figures that need at least one scored
    position are NaN when none was scored (a run cancelled before reaching this model).
    """

    label: str
    path: str | None
    file_bytes: int
    matrices: str  # type of the layer matrices ("Q5_1", or "mixed")
    head: str  # type of the output head
    fingerprint: str
    reference: str  # the reference's file name (or the source it was converted from)
    text: str  # where the tokens came from (a file name)
    tokens_sha256: str  # of the token ids scored, so results on the same text can be compared
    positions: int  # positions scored
    positions_wanted: int
    perplexity: float
    kl_mean: float
    kl_p99: float
    top1: float  # fraction, 0..1
    max_logit_diff: float
    tokens_per_second: float  # positions scored per second of this model's forward calls (sequence mode)
    is_reference: bool = False
    measured_at: str = ""  # ISO 8601, UTC
    file_mtime_ns: int = 0

    @property
    def partial(self) -> bool:
        return self.positions < self.positions_wanted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, `partial` is included."""
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        d["partial"] = self.partial
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Inverse of `to_dict`; raises KeyError/TypeError/ValueError on a malformed entry."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name in ("is_reference", "measured_at", "file_mtime_ns"):
                    continue
                raise KeyError(f.name)
            v = d[f.name]
            if f.type == "float":
                v = float("nan") if v is None else float(v)
            elif f.type == "int":
                v = int(v)
            kwargs[f.name] = v
        return cls(**kwargs)


@dataclass
class EvalReport:
    """The reference's own perplexity and every model's figures; `partial` after a cancel."""

    reference: EvalResult | None
    results: list[EvalResult]
    positions_wanted: int
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def partial(self) -> bool:
        rows = [r for r in (self.reference, *self.results) if r is not None]
        return self.cancelled or any(r.partial for r in rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "positions_wanted": self.positions_wanted,
            "partial": self.partial,
            "cancelled": self.cancelled,
            "seconds": self.seconds,
            "reference": self.reference.to_dict() if self.reference else None,
            "results": [r.to_dict() for r in self.results],
        }
