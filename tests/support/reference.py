"""Loader for the reference fixtures made by tools/make_reference.py from BlinkDL's `rwkv` package.

Each fixture is a pair in tests/fixtures/reference/: `<name>.pth` (the random checkpoint, a real
`torch.save` file in BlinkDL's layout) and `<name>.npz` (what the official implementation computed from
it). See docs/REFERENCE_FIXTURES.md for the format.

    ref = load_reference("tiny")
    ref.logits_decode   # (T, V) float32: logits after each one-token call, from a fresh state
    ref.state_seq       # (5·n_layer, n_embd) float32: state after one call with all T tokens

`read_pth_arrays` is a deliberately small, independent `.pth` reader (zip + restricted unpickler, no
torch) so that the fixtures can be checked without the runtime's own reader.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


@dataclass(frozen=True)
class Reference:
    """One fixture: the checkpoint's path and the official outputs for `tokens`."""

    name: str
    pth_path: Path
    tokens: np.ndarray  # (T,) int32
    logits_decode: np.ndarray  # (T, V) float32, after each of T single-token calls
    state_decode: np.ndarray  # (5L, C) float32, after the last single-token call
    logits_seq: np.ndarray  # (V,) float32, last token of one T-token call from a fresh state
    state_seq: np.ndarray  # (5L, C) float32, after that call
    # (V, C) float32: the embedding with ln0 folded in, as the package computed it (None in the
    # real-shape benchmark references, which do not store it)
    emb_ln0: np.ndarray | None
    n_layer: int
    n_embd: int
    n_vocab: int
    seed: int  # seed of tests.support.synthetic.v4_state_dict
    token_seed: int
    storage_dtype: str  # dtype of the matrices in the .pth: "float32" or "bfloat16"
    rwkv_version: str
    torch_version: str
    jit: str  # RWKV_JIT_ON used when recording
    strategy: str


def reference_names(directory: Path | None = None) -> list[str]:
    """Names of the fixtures present (those with both a .npz and a .pth)."""
    d = directory or FIXTURE_DIR
    return sorted(p.stem for p in d.glob("*.npz") if p.with_suffix(".pth").is_file())


def load_reference(name: str, directory: Path | None = None) -> Reference:
    """Load fixture `name` (e.g. "tiny", "small"); shapes are checked against the recorded sizes.

    `directory` defaults to tests/fixtures/reference; the real-shape references made with `--shape`
    (e.g. bench/out/reference, name "rwkv4-169m-random") load the same way.
    """
    d = directory or FIXTURE_DIR
    npz = d / f"{name}.npz"
    with np.load(npz, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    L, C, V = int(f["n_layer"]), int(f["n_embd"]), int(f["n_vocab"])
    ref = Reference(
        name=name,
        pth_path=d / f"{name}.pth",
        tokens=f["tokens"].astype(np.int32),
        logits_decode=f["logits_decode"],
        state_decode=f["state_decode"],
        logits_seq=f["logits_seq"],
        state_seq=f["state_seq"],
        emb_ln0=f.get("emb_ln0"),
        n_layer=L,
        n_embd=C,
        n_vocab=V,
        seed=int(f["seed"]),
        token_seed=int(f["token_seed"]),
        storage_dtype=str(f["storage_dtype"]),
        rwkv_version=str(f["rwkv_version"]),
        torch_version=str(f["torch_version"]),
        jit=str(f["jit"]),
        strategy=str(f["strategy"]),
    )
    T = len(ref.tokens)
    expect = {
        "logits_decode": (T, V),
        "state_decode": (5 * L, C),
        "logits_seq": (V,),
        "state_seq": (5 * L, C),
        "emb_ln0": (V, C),
    }
    for key, shape in expect.items():
        got = getattr(ref, key)
        if got is None:
            continue
        if got.shape != shape or got.dtype != np.float32:
            raise ValueError(f"{npz}: {key} is {got.dtype}{got.shape}, expected float32{shape}")
    return ref


# --- a minimal torch zip checkpoint reader --------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 below
    "DoubleStorage": np.dtype("<f8"),
}


@dataclass
class _Storage:
    kind: str
    key: str


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_rest: Any) -> tuple:
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(kind=pid[1], key=str(pid[2]))


def read_pth_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a torch zip checkpoint as float32 numpy arrays (bf16/f16 widened exactly)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoint")
        obj = _Unpickler(io.BytesIO(zf.read(pkl))).load()
        blobs: dict[str, bytes] = {}
        out: dict[str, np.ndarray] = {}
        for name, t in obj.items():
            _, st, offset, size, stride = t
            if st.key not in blobs:
                blobs[st.key] = zf.read(f"{prefix}data/{st.key}")
            flat = np.frombuffer(blobs[st.key], dtype=_STORAGE_DTYPES[st.kind])
            if st.kind == "BFloat16Storage":
                flat = (flat.astype(np.uint32) << 16).view(np.float32)
            item = flat.itemsize
            arr = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=tuple(s * item for s in stride)
            )
            out[name] = np.array(arr, dtype=np.float32)
    return out


@dataclass(frozen=True)
class ReferenceV7:
    """An RWKV-7, RWKV-6 or RWKV-5.2 fixture (tools/make_reference.py --arch 7, 6 or 5); states in
    rwkv-tui's layout: per layer att x_prev, ffn x_prev, then the (H, N, N) WKV matrix as N rows of C."""

    name: str
    pth_path: Path
    tokens: np.ndarray  # (T,) int32
    logits_decode: np.ndarray  # (T, V): after each of T single-token calls from a fresh state
    state_decode: np.ndarray  # (L·(2+N), C): after the last of them
    logits_seq_all: np.ndarray  # (T, V): every position of one T-token call (full_output=True)
    logits_seq: np.ndarray  # (V,): its last row
    state_seq: np.ndarray  # (L·(2+N), C): after that call
    n_layer: int
    n_embd: int
    n_vocab: int
    head_size: int
    ranks: tuple[int, ...]


def load_reference_v7(name: str, directory: Path | None = None) -> ReferenceV7:
    d = directory or FIXTURE_DIR
    npz = d / f"{name}.npz"
    with np.load(npz, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    L, C, V, N = (int(f[k]) for k in ("n_layer", "n_embd", "n_vocab", "head_size"))
    ref = ReferenceV7(
        name, d / f"{name}.pth", f["tokens"].astype(np.int32), f["logits_decode"], f["state_decode"],
        f["logits_seq_all"], f["logits_seq"], f["state_seq"], L, C, V, N, tuple(int(r) for r in f["ranks"]),
    )
    T = len(ref.tokens)
    expect = {"logits_decode": (T, V), "state_decode": (L * (2 + N), C), "logits_seq_all": (T, V),
              "logits_seq": (V,), "state_seq": (L * (2 + N), C)}
    for key, shape in expect.items():
        got = getattr(ref, key)
        if got.shape != shape or got.dtype != np.float32:
            raise ValueError(f"{npz}: {key} is {got.dtype}{got.shape}, expected float32{shape}")
    return ref
