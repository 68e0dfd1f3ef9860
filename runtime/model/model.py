"""`Model`: a loaded RWKV model whose forward pass is one native call per step.

    model = load_model("raven-7b-q5_1.gguf")
    state = model.new_state()
    logits, state = model.forward([510, 3158], state)

`forward` runs the compiled forward function on every thread of the pool with the GIL released: it
reads the state it is given (which stays usable: regenerate, fork) and writes a new one (into fresh memory,
or that of a dead state given as `into`), and returns
float32 logits of the last token with the new state. Calls on one model are serialised by a lock (they share scratch
memory); use one `Model` per concurrent stream if ever needed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from runtime.errors import DamagedModelError
from runtime.formats.tensors import LazyTensor
from runtime.jit.engine import CompiledModule, compile_built
from runtime.jit.release import release_compiler_pages
from runtime.jit.threads import ThreadPool, new_barrier
from runtime.model.arch.base import FLAG_STRIDE, FORWARD_NAME
from runtime.model.layout import N_ARGS, Arg, aligned_zeros
from runtime.model.loader import LoadedWeights, load_weights
from runtime.model.state import State, StateError
from runtime.pagecache import huge_mapped_fraction
from runtime.threadcount import check_threads


class Model:
    """A runnable model. Create with `runtime.load_model`."""

    def __init__(self, weights: LoadedWeights, threads: int | None = None) -> None:
        self._weights = weights
        self.spec = weights.spec
        self.arch = weights.arch  # the architecture's module in runtime/model/arch/
        self.arch_name: str = self.arch.NAME
        self.path: Path = weights.path
        self.version = weights.checkpoint.arch.version
        self.n_layer = self.spec.n_layer
        self.n_embd = self.spec.n_embd
        self.n_vocab = self.spec.n_vocab
        self.fingerprint = weights.fingerprint
        self.metadata = weights.metadata
        t0 = time.perf_counter()
        self._compiled: CompiledModule = compile_built(
            f"{self.arch.NAME} {self.spec!r}", lambda: self.arch.build_forward_module(self.spec)
        )
        self.compile_seconds = time.perf_counter() - t0
        self.compiled_from_cache = self._compiled.stats.cached
        self._forward_address = self._compiled.address(FORWARD_NAME)
        release_compiler_pages()
        self._pool = ThreadPool(threads)
        self.threads = self._pool.n_threads
        self._scratch = aligned_zeros(self.spec.scratch_floats, np.float32)
        self._barrier = new_barrier()
        self._args = aligned_zeros(N_ARGS, np.int64)
        self._lock = threading.Lock()

    @property
    def tensors(self) -> Mapping[str, LazyTensor]:
        """The file's tensors by internal name (`blocks.0.att.key.weight`, `head.weight`, …): shape,
        dtype and bytes, read-only; the weights themselves stay in the mapped file."""
        return MappingProxyType(self._weights.checkpoint.tensors)

    @property
    def file_type(self) -> str:
        """The type of the layer matrices: 'Q5_1', 'F16', …"""
        return self.spec.layer_types[0][0].name

    @property
    def tokenizer_name(self) -> str:
        """'gpt-neox-20b', 'rwkv-world', 'rwkv-gguf' (the file's own rwkv token list) or 'none'."""
        from runtime.text.gguf_vocab import tokenizer_name_for_metadata

        return tokenizer_name_for_metadata(self.metadata, self.n_vocab)

    @property
    def tokenizer(self) -> Any:
        """This model's `runtime.text.tokenizers.Tokenizer` (loaded once per process): the one its
        metadata names or holds (runtime/text/gguf_vocab.py), else the one its vocabulary size tells."""
        from runtime.errors import UnsupportedModelError
        from runtime.text.gguf_vocab import tokenizer_for_metadata
        from runtime.text.tokenizers import TOKENIZER_NAMES, TokenizerError

        try:
            return tokenizer_for_metadata(self.metadata, self.n_vocab)
        except TokenizerError:
            raise UnsupportedModelError(
                self.path, f"no known tokenizer for this model (tokenizer '{self.tokenizer_name}', vocabulary of "
                f"{self.n_vocab}); known: {', '.join(TOKENIZER_NAMES)}"
            ) from None

    def new_state(self) -> State:
        return State(self.arch.new_state_data(self.spec), self.fingerprint, None, self.arch_name)

    def check_state(self, state: State) -> None:
        """Raise StateError unless `state` was made by this model."""
        if state.arch != self.arch_name:
            raise StateError(
                f"this state belongs to an {state.arch} model; the loaded model {self.path.name} is {self.arch_name}"
            )
        if state.fingerprint != self.fingerprint:
            raise StateError(
                f"this state was made by a different model (fingerprint {state.fingerprint[:12]}…, "
                f"the loaded model {self.path.name} is {self.fingerprint[:12]}…)"
            )
        if state.data.shape != self.spec.state_shape or state.data.dtype != np.float32:
            raise StateError(f"state has shape {state.data.shape}, the model needs {self.spec.state_shape}")
        if state.logits is not None and state.logits.shape != (self.n_vocab,):
            raise StateError(f"state carries {state.logits.size} logits, the model has a vocabulary of {self.n_vocab}")

    def state_from_bytes(self, blob: bytes, source: str = "saved state") -> State:
        state = State.from_bytes(blob, source)
        self.check_state(state)
        return state

    def forward(
        self, tokens: Sequence[int] | np.ndarray, state: State | None = None, *, want_logits: bool = True,
        into: State | None = None,
    ) -> tuple[np.ndarray | None, State]:
        """Feed `tokens` from `state` (a fresh one if None): (logits of the last token, new state).

        Several tokens run in sequence mode (matrix × matrix over chunks) and give the same result
        as feeding them one at a time. `want_logits=False` skips the head (prompt ingestion).
        `into`: a state of this model that is no longer needed (e.g. the oldest of a generation's
        history), whose memory the new state is written into instead of fresh memory; it must not be
        used afterwards (StateError if it is another model's, read-only, or shares `state`'s memory).
        Fresh memory every token, while earlier states are kept, costs page faults or writes to memory
        long out of cache (bench/history_states.py).
        """
        ids = self._check_tokens(tokens)
        out = None if into is None else self._reusable(into, state)
        logits = np.empty(self.n_vocab, dtype=np.float32) if want_logits else None
        new, flagged = self._run(ids, state, logits, None, out)
        self._check_finite(ids, state, logits, new, flagged)
        return logits, State(new, self.fingerprint, logits, self.arch_name)

    def forward_all(self, tokens: Sequence[int] | np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """Like `forward`, in sequence mode, but returns the logits after every token: (len(tokens), V).

        For scoring a text (`rwkv-tui eval`); the buffer is len(tokens) × V floats, so feed a long
        text in pieces, carrying the state.
        """
        ids = self._check_tokens(tokens)
        all_logits = np.empty((ids.size, self.n_vocab), dtype=np.float32)
        new, flagged = self._run(ids, state, None, all_logits)
        self._check_finite(ids, state, all_logits, new, flagged)
        return all_logits, State(new, self.fingerprint, all_logits[-1].copy(), self.arch_name)

    def _check_finite(self, ids: np.ndarray, state: State | None, logits: np.ndarray | None,
                      new: np.ndarray, flagged: bool) -> None:
        """Raise if a step gave NaN or infinite logits or state: StateError when the same tokens from a
        fresh state give finite values (the state given was damaged, e.g. a huge value that passed its
        checks), else DamagedModelError (the file's weights). The recurrent blocks of an RWKV-5/6/7
        state were checked by the forward pass itself (`flagged`); this checks the logits (~7 µs for
        65536) and the rest of the state (its shift vectors; all of a small RWKV-4 state). The second
        step runs only on failure."""
        what = _non_finite(logits=logits) or ("a state" if flagged else _non_finite(a_state=self._unflagged(new)))
        if what is None:
            return
        if state is not None:
            fresh_logits = None if logits is None else np.empty(self.n_vocab, dtype=np.float32)
            fresh, fresh_flagged = self._run(ids, None, fresh_logits, None)
            if not fresh_flagged and _non_finite(logits=fresh_logits, a_state=self._unflagged(fresh)) is None:
                verb = "is" if what == "a state" else "are"
                raise StateError(
                    f"the state given made {self.path.name} produce {what} that {verb} not finite, which the "
                    "same tokens from a fresh state do not: the state is damaged"
                )
        raise DamagedModelError(self.path, what)

    def _check_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return ids.astype(np.int32)

    def _unflagged(self, data: np.ndarray) -> np.ndarray:
        """The rows of each layer's state that the forward pass's own check does not cover (a view)."""
        rows = self.spec.state_rows_per_layer
        return data.reshape(self.n_layer, rows, self.n_embd)[:, : self.spec.unflagged_state_rows]

    def _reusable(self, into: State, state: State | None) -> np.ndarray:
        """`into`'s data, to be written over by forward: refused unless it is this model's, writable and
        contiguous, and shares no memory with `state` (which the pass reads while it writes)."""
        try:
            self.check_state(into)
        except StateError as e:
            raise StateError(f"the state to reuse: {e}") from None
        data = into.data
        if not (data.flags.c_contiguous and data.flags.writeable):
            raise StateError("the state to reuse is read-only or not contiguous; its memory cannot hold a new state")
        if state is not None and np.may_share_memory(data, state.data):
            raise StateError("the state to reuse is the state read (or shares its memory); give another one")
        return data

    def _run(self, ids32: np.ndarray, state: State | None, logits: np.ndarray | None,
             all_logits: np.ndarray | None, out: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """One native call: (the new state's data — `out` where given, else fresh memory — and whether
        the call found a non-finite value in the state blocks it checks). The given state is only read."""
        if state is None:
            state = self.new_state()
        else:
            self.check_state(state)
        given = np.ascontiguousarray(state.data)
        new = np.empty(self.spec.state_shape, dtype=np.float32) if out is None else out
        with self._lock:
            a = self._args
            a[Arg.TOKENS] = ids32.ctypes.data
            a[Arg.N_TOKENS] = ids32.size
            a[Arg.STATE] = new.ctypes.data
            a[Arg.STATE_IN] = given.ctypes.data
            a[Arg.LOGITS] = logits.ctypes.data if logits is not None else 0
            a[Arg.ALL_LOGITS] = all_logits.ctypes.data if all_logits is not None else 0
            a[Arg.SCRATCH] = self._scratch.ctypes.data
            a[Arg.BARRIER] = self._barrier.address
            a[Arg.WEIGHTS] = self._weights.weight_table.ctypes.data
            a[Arg.PARAMS] = self._weights.params.ctypes.data
            self._pool.run(self._forward_address, a.ctypes.data)
            flags = self._scratch[self.spec.flags_offset : self.spec.flags_offset + self.threads * FLAG_STRIDE]
            flagged = not bool(np.isfinite(flags[::FLAG_STRIDE]).all())
        return new, flagged

    def mapped_bytes(self) -> np.ndarray:
        """The mapped file as read-only uint8 (indexed by file offset, as `tensors[…].offset`), for
        benchmarks that read the weights' own pages."""
        view = self._weights.view
        if view is None:
            raise ValueError(f"{self.path.name} is closed")
        out = view.view()
        out.flags.writeable = False
        return out

    def huge_page_share(self) -> float | None:
        """The share of the mapped weights' resident pages held in 2 MB pages, the embedding left out
        (Linux; None elsewhere); see runtime/pagecache.py for why it matters and when it is low."""
        return huge_mapped_fraction(self._weights.base_address, len(self._weights.mapping))

    def close(self) -> None:
        """Stop the worker threads and unmap the file."""
        with self._lock:
            self._pool.close()
            self._weights.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _non_finite(**arrays: np.ndarray | None) -> str | None:
    """The name of the first array holding a NaN or infinity ("logits", "a state"), or None."""
    for name, values in arrays.items():
        if values is not None and not np.isfinite(values).all():
            return name.replace("_", " ")
    return None


def load_model(path: str | os.PathLike[str], threads: int | None = None) -> Model:
    """Load a GGUF (from `rwkv-tui convert`) or rwkv.cpp `.bin` model; threads=None uses all cores
    (ThreadCountError, before the file is read, outside 1 … runtime.threadcount.max_threads())."""
    threads = check_threads(threads)
    return Model(load_weights(path), threads)
