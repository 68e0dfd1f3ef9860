"""Choosing the next token: sampling settings and a seeded, reproducible `Sampler`.

The semantics are those of the official RWKV chat (`rwkv.utils.PIPELINE.generate` and
`sample_logits`):

- penalties, on generated tokens only (never the prompt): before each draw, every token n generated
  so far in this reply has `presence_penalty + count[n] * frequency_penalty` taken off its logit.
  After each generated token every count is multiplied by `penalty_decay`, then the new token's
  count grows by its weight: 0 when its decoded text `t` passes the official test
  `t in ' \\t0123456789'`, else 1. That test is a *substring* test, so it exempts exactly: the empty
  string (special tokens such as end-of-text, which decode to nothing), and any contiguous piece of
  " \\t0123456789" — " ", "\\t", " \\t", a digit, a run of consecutive ascending digits such as "12"
  or "789", and " \\t0…" prefixes. It does not exempt "\\n", "  " (two spaces), "00", "21" or " 1".
  An exempt token still gets the presence penalty (its count is 0, not absent);
- `PIPELINE.generate` starts with empty counts on every call, that is, for every reply: call
  `Sampler.reset()` when a new reply starts;
- banned tokens get -inf; then softmax; top-p on the untempered probabilities (the smallest set of
  most probable tokens whose cumulative probability reaches top_p; every token tied with the last
  one is kept); top-k (0 = off; tokens tied with the k-th are kept, where the official code drops
  an arbitrary subset of them); then p^(1/temperature), renormalised, and one draw;
- temperature 0 (below MIN_TEMPERATURE), top_p 0 or top_k 1 is greedy: the most probable token
  (ties, which practically never happen, are broken by the draw). top_p 1 disables top-p (the
  official float32 cumulative sum may end just below 1.0 and then keep only the top token; that
  accident is not reproduced).

All the per-token work over the vocabulary runs in one native call (`runtime/jit/kernels/sample.py`)
with the GIL released; the only Python-side randomness is one uniform number per token from the
sampler's own `random.Random(seed)`, so the same seed and the same logits give the same tokens.
`max_tokens` and `stop` are carried here for the conversation layer, which enforces them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import RwkvError
from runtime.jit.kernels.sample import BAD_LOGITS, NO_TOKEN, padded_length, sample_kernels

PENALTY_EXEMPT = " \t0123456789"  # the official chat's `ttt in ' \t0123456789'` (a substring test)
MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy
MAX_TEMPERATURE = 10.0
MAX_PENALTY = 10.0
MAX_TOKENS_LIMIT = 1_000_000


class SamplingError(RwkvError, ValueError):
    """A sampling setting is invalid, or the logits cannot be sampled (NaN, everything banned)."""


def penalty_exempt(text: str) -> bool:
    """Whether a token that decodes to `text` adds nothing to its penalty count (the official rule)."""
    return text in PENALTY_EXEMPT


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

_FLOAT_RANGES = {
    "temperature": (0.0, MAX_TEMPERATURE),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-MAX_PENALTY, MAX_PENALTY),
    "frequency_penalty": (-MAX_PENALTY, MAX_PENALTY),
    "penalty_decay": (0.0, 1.0),
}
_INT_RANGES = {"top_k": (0, 10_000_000), "max_tokens": (1, MAX_TOKENS_LIMIT)}
_ALIASES = {"temp": "temperature", "topp": "top_p", "topk": "top_k", "presence": "presence_penalty",
            "frequency": "frequency_penalty", "decay": "penalty_decay", "max": "max_tokens",
            "ban": "banned_tokens", "banned": "banned_tokens"}


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens; validated on construction (SamplingError, a ValueError, naming the key)."""

    temperature: float = 1.0
    top_p: float = 0.3
    top_k: int = 0
    presence_penalty: float = 0.4
    frequency_penalty: float = 0.4
    penalty_decay: float = 0.996
    max_tokens: int = 500
    banned_tokens: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, (low, high) in _FLOAT_RANGES.items():
            object.__setattr__(self, key, _check_float(key, getattr(self, key), low, high))
        for key, (low, high) in _INT_RANGES.items():
            object.__setattr__(self, key, _check_int(key, getattr(self, key), low, high))
        object.__setattr__(self, "banned_tokens", _check_banned(self.banned_tokens))
        object.__setattr__(self, "stop", _check_stop(self.stop))

    def replace(self, **changes: Any) -> SamplingSettings:
        """A validated copy with `changes` applied; an unknown key is a SamplingError naming it."""
        unknown = sorted(set(changes) - set(SETTING_NAMES), key=str)
        if unknown:
            raise SamplingError(f"unknown sampling setting {unknown[0]!r}; valid: {', '.join(SETTING_NAMES)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for the tuples), ready for TOML or JSON."""
        out = dataclasses.asdict(self)
        out["banned_tokens"] = list(self.banned_tokens)
        out["stop"] = list(self.stop)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingSettings:
        """Settings from a mapping; missing keys keep their defaults, unknown keys or bad values raise
        SamplingError naming the key."""
        if not isinstance(d, Mapping):
            raise SamplingError(f"sampling settings must be a table of key = value, got {type(d).__name__}")
        bad = [k for k in d if not isinstance(k, str)]
        if bad:
            raise SamplingError(f"unknown sampling setting {bad[0]!r}; valid: {', '.join(SETTING_NAMES)}")
        return cls().replace(**dict(d))

    def set(self, key: str, text_value: str) -> SamplingSettings:
        """A copy with one setting parsed from text, as typed in `/set temperature 0.8`.

        Numbers as usual; `banned_tokens` as ids separated by commas or spaces; `stop` as a JSON list
        of strings or a single string with \\n, \\t, \\\\ escapes; "none" or "" clears either list."""
        name = _canonical_key(key)
        text = text_value.strip()
        if name in _FLOAT_RANGES:
            value: Any = _parse_number(name, text, float)
        elif name in _INT_RANGES:
            value = _parse_number(name, text, int)
        elif name == "banned_tokens":
            value = _parse_ids(text)
        else:
            value = _parse_stop(text_value)
        return self.replace(**{name: value})


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def _canonical_key(key: str) -> str:
    name = key.strip().lower().replace("-", "_")
    name = _ALIASES.get(name.replace("_", ""), _ALIASES.get(name, name))
    if name not in SETTING_NAMES:
        raise SamplingError(f"unknown sampling setting {key!r}; valid: {', '.join(SETTING_NAMES)}")
    return name


def _check_float(key: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise SamplingError(f"{key} must be between {low:g} and {high:g}, got {value!r}")
    return value


def _check_int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingError(f"{key} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise SamplingError(f"{key} must be between {low} and {high}, got {value}")
    return value


def _check_banned(value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise SamplingError(f"banned_tokens must be a list of token ids, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise SamplingError(f"banned_tokens must hold token ids (whole numbers >= 0), got {item!r}")
        if item not in out:
            out.append(item)
    return tuple(out)


def _check_stop(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise SamplingError(f"stop must be a list of strings, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise SamplingError(f"stop must hold non-empty strings, got {item!r}")
    return tuple(value)


def _parse_number(key: str, text: str, kind: type) -> float | int:
    try:
        if kind is int:
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        return float(text)
    except (ValueError, OverflowError):
        what = "a whole number" if kind is int else "a number"
        raise SamplingError(f"{key} must be {what}, got {text!r}") from None


def _parse_ids(text: str) -> tuple[int, ...]:
    if text.lower() in ("", "none"):
        return ()
    parts = text.replace(",", " ").split()
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise SamplingError(f"banned_tokens must be token ids separated by commas or spaces, got {text!r}") from None


def _unescape(text: str) -> str:
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_stop(text_value: str) -> tuple[str, ...]:
    text = text_value.strip()
    if text.lower() in ("", "none"):
        return ()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise SamplingError(f"stop: not a valid JSON list of strings ({e.msg})") from None
        return _check_stop(value)
    return (_unescape(text_value.strip(" ")),)


# ---------------------------------------------------------------------------------------------
# Penalty weights per token
# ---------------------------------------------------------------------------------------------

_weights_cache: dict[str, np.ndarray] = {}
_weights_lock = threading.Lock()


def penalty_weights(tokenizer: Any) -> np.ndarray:
    """float32 array over the vocabulary: 0 for tokens whose decoded text is penalty-exempt, else 1.

    `tokenizer` is an object with `decode(ids)` and `n_vocab` (and a `name`, which caches the result
    for the process), or a tokenizer name for `runtime.text.tokenizers.load_tokenizer`. For 20B this
    equals the official weights for every id; for World it does too except the 7 ids with no
    vocabulary entry (0 = end of text, 65530-65535), which decode to "" and count 0 here, while the
    official World decoder fails on them and counts 1 (generation stops at end of text anyway)."""
    if isinstance(tokenizer, str):
        from runtime.text.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    name = getattr(tokenizer, "name", None)
    if isinstance(name, str):
        with _weights_lock:
            cached = _weights_cache.get(name)
        if cached is not None and len(cached) == tokenizer.n_vocab:
            return cached
    weights = np.ones(int(tokenizer.n_vocab), dtype=np.float32)
    for token in range(len(weights)):
        if penalty_exempt(tokenizer.decode([token])):
            weights[token] = 0.0
    weights.flags.writeable = False
    if isinstance(name, str):
        with _weights_lock:
            _weights_cache[name] = weights
    return weights


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSnapshot:
    """Everything a Sampler remembers: penalty counts (in first-generated order) and the RNG state."""

    n_vocab: int
    tokens: tuple[int, ...]
    counts: tuple[float, ...]
    rng_state: tuple


def _pointer(array: np.ndarray | None) -> int | None:
    return array.ctypes.data if array is not None and array.size else None


class Sampler:
    """Draws tokens from logits with `settings`, remembering generated tokens for the penalties.

    Not thread-safe: use one per conversation. Native buffers (about 24 bytes per vocabulary entry)
    live as long as the sampler."""

    def __init__(self, settings: SamplingSettings, n_vocab: int,
                 penalty_weight: Callable[[int], float] | Sequence[float] | np.ndarray,
                 seed: int | None = None) -> None:
        if isinstance(n_vocab, bool) or not isinstance(n_vocab, (int, np.integer)) or not 0 < n_vocab < 2**31:
            raise SamplingError(f"n_vocab must be a positive whole number, got {n_vocab!r}")
        self.n_vocab = int(n_vocab)
        self._weight_fn: Callable[[int], float] | None = None
        self._weights: np.ndarray | None = None
        if callable(penalty_weight):
            self._weight_fn = penalty_weight
        else:
            weights = np.asarray(penalty_weight, dtype=np.float64)
            if weights.shape != (self.n_vocab,):
                raise SamplingError(f"penalty_weight has {weights.size} entries, expected one per token ({n_vocab})")
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise SamplingError("penalty_weight must hold finite weights >= 0")
            self._weights = weights
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
        self._rng = random.Random(self.seed)
        self._kernels = sample_kernels()
        n_pad = padded_length(self.n_vocab)
        self._n_pad = n_pad
        self._scratch = np.empty(3 * n_pad, dtype=np.float32)
        self._counts = np.full(self.n_vocab, -1.0, dtype=np.float64)
        self._touched = np.zeros(self.n_vocab, dtype=np.int32)
        self._n_touched = ctypes.c_int64(0)
        self._banned = np.zeros(0, dtype=np.int32)
        self.settings = settings

    @property
    def settings(self) -> SamplingSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: SamplingSettings) -> None:
        if not isinstance(settings, SamplingSettings):
            raise SamplingError(f"settings must be SamplingSettings, got {type(settings).__name__}")
        bad = [t for t in settings.banned_tokens if t >= self.n_vocab]
        if bad:
            raise SamplingError(f"banned token {bad[0]} is outside the vocabulary (ids 0..{self.n_vocab - 1})")
        self._settings = settings
        self._banned = np.array(settings.banned_tokens, dtype=np.int32)

    def sample(self, logits: np.ndarray) -> int:
        """Apply the penalties, draw a token with this sampler's RNG, and record it."""
        token = self.choose(logits, self._rng.random())
        self.record(token)
        return token

    def choose(self, logits: np.ndarray, u: float) -> int:
        """The token for the uniform number `u` in [0, 1) under the current counts; records nothing.

        The same logits, counts, settings and `u` always give the same token."""
        x = self._as_logits(logits)
        s = self._settings
        temperature = s.temperature if s.temperature >= MIN_TEMPERATURE else 0.0
        top_k = s.top_k if s.top_k < self.n_vocab else 0
        token = self._kernels.sample(
            x.ctypes.data, self.n_vocab, self._scratch.ctypes.data, self._n_pad,
            self._touched.ctypes.data, self._n_touched.value, self._counts.ctypes.data,
            s.presence_penalty, s.frequency_penalty, _pointer(self._banned), len(self._banned),
            temperature, s.top_p, top_k, min(max(float(u), 0.0), math.nextafter(1.0, 0.0)),
        )
        if token == BAD_LOGITS:
            raise SamplingError("the model produced NaN or infinite logits; the model file may be damaged")
        if token == NO_TOKEN or not 0 <= token < self.n_vocab:
            raise SamplingError("no token can be chosen: every token is banned or has a logit of -inf")
        return int(token)

    def record(self, token: int) -> None:
        """Count a generated token: every count decays by penalty_decay, then the token's count grows
        by its weight."""
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < self.n_vocab:
            raise SamplingError(f"token {token!r} is outside the vocabulary (ids 0..{self.n_vocab - 1})")
        weight = self._weight_of(int(token))
        self._kernels.record(self._touched.ctypes.data, ctypes.addressof(self._n_touched), self._counts.ctypes.data,
                             int(token), weight, self._settings.penalty_decay)

    def counts(self) -> dict[int, float]:
        """The penalty count of every token generated since the last reset (exempt tokens count 0)."""
        ids = self._touched[: self._n_touched.value]
        return {int(t): float(c) for t, c in zip(ids, self._counts[ids], strict=True)}

    def reset(self) -> None:
        """Forget the generated tokens (call at the start of each reply, as the official chat does).
        The RNG continues."""
        self._counts[self._touched[: self._n_touched.value]] = -1.0
        self._n_touched.value = 0

    def snapshot(self) -> SamplerSnapshot:
        """The counts and the RNG state, to `restore` later (e.g. to regenerate a reply)."""
        ids = self._touched[: self._n_touched.value]
        return SamplerSnapshot(self.n_vocab, tuple(int(t) for t in ids), tuple(float(c) for c in self._counts[ids]),
                               self._rng.getstate())

    def restore(self, snap: SamplerSnapshot) -> None:
        """Go back to the state of `snapshot()` (from a sampler over the same vocabulary)."""
        if not isinstance(snap, SamplerSnapshot) or snap.n_vocab != self.n_vocab:
            raise SamplingError("this snapshot was taken from a sampler over a different vocabulary")
        if len(snap.tokens) != len(snap.counts) or any(not 0 <= t < self.n_vocab for t in snap.tokens) \
                or len(set(snap.tokens)) != len(snap.tokens) \
                or any(not (math.isfinite(c) and c >= 0) for c in snap.counts):
            raise SamplingError("the sampler snapshot is malformed")
        rng = random.Random()
        try:
            rng.setstate(snap.rng_state)
        except (TypeError, ValueError):
            raise SamplingError("the sampler snapshot's random state is malformed") from None
        self.reset()
        n = len(snap.tokens)
        self._touched[:n] = snap.tokens
        self._counts[self._touched[:n]] = snap.counts
        self._n_touched.value = n
        self._rng = rng

    def _weight_of(self, token: int) -> float:
        if self._weights is not None:
            return float(self._weights[token])
        weight = float(self._weight_fn(token))
        if not math.isfinite(weight) or weight < 0:
            raise SamplingError(f"penalty weight of token {token} must be a finite number >= 0, got {weight!r}")
        return weight

    def _as_logits(self, logits: np.ndarray) -> np.ndarray:
        x = np.asarray(logits)
        if x.ndim != 1 or x.shape[0] != self.n_vocab:
            raise SamplingError(f"expected {self.n_vocab} logits in one row, got shape {x.shape}")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        return x
