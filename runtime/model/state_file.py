"""State-tuned starting states: BlinkDL's state-tuning `.pth` files, checked and turned into a `State`.

A state-tuning file holds, per layer, `blocks.N.att.time_state` of shape (H, N, N) float: a trained
WKV matrix a conversation starts from instead of zeros (token-shift rows start at zero). The official
package loads it for RWKV-5/6 as `time_state.transpose(1, 2)` (rwkv 0.8.32 `RWKV.forward`), i.e. the
file holds S[h][value][key] and the runtime's v5/v6 state is S[h][key][value]; for RWKV-7, whose state
is S[h][value][key] already, the file's matrices are taken as they are (the package has no RWKV-7
loader for these files: this orientation is inferred from the training code's convention, not read
from a loader). RWKV-4 has no such states.

Everything is validated before a `State` is built: every layer present once, nothing else in the
file, each matrix the model's (H, N, N), finite values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelFileError
from runtime.formats.detect import Architecture
from runtime.model.state import State

TIME_STATE = re.compile(r"^blocks\.(0|[1-9]\d*)\.att\.time_state$")
STATE_VERSIONS = ("5.2", "6", "7")  # architectures with a WKV matrix state
TRANSPOSED_VERSIONS = ("5.2", "6")  # the file's matrices are the transpose of the runtime's


def read_time_states(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """The per-layer (H, N, N) float32 matrices of a state-tuning `.pth`, layers 0..L-1 each present,
    all of one shape, finite; anything else is a ModelFileError naming the file."""
    from runtime.formats.checkpoint import sniff_format
    from runtime.formats.pth import read_pth

    path = Path(path)
    if sniff_format(path) != "zip":
        raise ModelFileError(path, "not a state-tuning file (expected a PyTorch .pth holding "
                             "blocks.N.att.time_state tensors)")
    tensors = read_pth(path)
    layers: dict[int, Any] = {}
    other = []
    for name, t in tensors.items():
        m = TIME_STATE.match(name)
        if m is None:
            other.append(name)
        else:
            layers[int(m.group(1))] = t
    if not layers:
        raise ModelFileError(path, "not a state-tuning file: no blocks.N.att.time_state tensors"
                             + (f" (found {', '.join(sorted(other)[:4])})" if other else ""))
    if other:
        raise ModelFileError(path, f"unexpected tensors in a state-tuning file: {', '.join(sorted(other)[:4])}")
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing:
        raise ModelFileError(path, f"the state of layer {missing[0]} is missing")
    shape = layers[0].shape
    out = {}
    for i in sorted(layers):
        t = layers[i]
        if len(t.shape) != 3 or t.shape[1] != t.shape[2] or t.shape != shape:
            raise ModelFileError(path, f"blocks.{i}.att.time_state has shape {t.shape}, expected (H, N, N) "
                                 f"like layer 0's {shape}")
        a = t.numpy().astype(np.float32)
        if not np.isfinite(a).all():
            raise ModelFileError(path, f"blocks.{i}.att.time_state contains NaN or infinite values")
        out[i] = a
    return out


def check_fits(path: str | os.PathLike[str], states: dict[int, np.ndarray], arch: Architecture, model: str) -> None:
    """Raise ModelFileError unless `states` (read_time_states) fit a model of architecture `arch`
    (named `model` in the message)."""
    path = Path(path)
    if arch.version not in STATE_VERSIONS:
        raise ModelFileError(path, f"{model} is an {arch.name} model, which has no state-tuned starting states "
                             "(RWKV-5.2, 6 and 7 have)")
    H, N = arch.n_head, arch.head_size
    shape = states[0].shape
    if len(states) != arch.n_layer or shape != (H, N, N):
        raise ModelFileError(
            path, f"this state has {len(states)} layers of {shape}, but {model} needs {arch.n_layer} layers "
            f"of {(H, N, N)}"
        )


def model_architecture(model: Any) -> Architecture:
    """What `check_fits` needs of a loaded runtime Model."""
    spec = model.spec
    return Architecture(model.version, spec.n_layer, spec.n_embd, spec.n_vocab, spec.n_ffn,
                        getattr(spec, "head_size", 0))


def starting_state(path: str | os.PathLike[str], model: Any) -> State:
    """The `State` a conversation on `model` (a loaded runtime Model) starts from: its zero state with
    each layer's WKV matrix replaced by the file's (transposed for RWKV-5.2/6, as the package does)."""
    states = read_time_states(path)
    arch = model_architecture(model)
    check_fits(path, states, arch, model.path.name)
    state = model.new_state()
    rows = state.data.reshape(arch.n_layer, 2 + arch.head_size, arch.n_embd)
    for i, s in states.items():
        matrix = s.transpose(0, 2, 1) if arch.version in TRANSPOSED_VERSIONS else s
        rows[i, 2:] = np.ascontiguousarray(matrix).reshape(arch.head_size, arch.n_embd)
    return state


def time_states_of(state: State, arch: Architecture) -> dict[str, np.ndarray]:
    """The inverse of `starting_state` for a state's WKV matrices: the `blocks.N.att.time_state`
    tensors a state-tuning file would hold for it (the token-shift rows are not part of such files)."""
    H, N = arch.n_head, arch.head_size
    rows = state.data.reshape(arch.n_layer, 2 + N, arch.n_embd)
    out = {}
    for i in range(arch.n_layer):
        matrix = rows[i, 2:].reshape(H, N, N)
        out[f"blocks.{i}.att.time_state"] = np.ascontiguousarray(
            matrix.transpose(0, 2, 1) if arch.version in TRANSPOSED_VERSIONS else matrix)
    return out
