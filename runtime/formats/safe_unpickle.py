"""A restricted unpickler for the `data.pkl` of a torch checkpoint: tensors described, nothing executed.

A `.pth` file's pickle may name any Python global, and the standard unpickler would import and call it.
This one admits only the handful of names `torch.save` emits for a state dict of tensors and maps each
to a harmless local stand-in that builds a plain description (`TensorRecord`, `StorageRef`); torch is
never imported. Any other global raises `UnsafePickleError` before anything is imported or called.

What `torch.save` (checked with torch 2.13) writes for `{name: tensor}`, pickle protocol 2:

    collections.OrderedDict()                         # the state dict, then SETITEMS
    torch._utils._rebuild_tensor_v2(
        BINPERSID ('storage', torch.<X>Storage, key, location, numel),
        storage_offset, size, stride, requires_grad, OrderedDict())   # backward hooks
    torch._utils._rebuild_tensor_v3(...same..., torch.<dtype>)        # dtypes without a typed storage,
        with the storage type torch.storage.UntypedStorage (numel counted in bytes)
    torch._utils._rebuild_parameter(tensor, requires_grad, OrderedDict())  # nn.Parameter values

The result must be a dict of str → tensor; its checks against the zip's members live in `pth.py`.

Before the unpickler runs, a scan of the opcodes (`pickletools.genops`, which builds nothing) bounds
what the pickle can make it allocate by the pickle's own content: every opcode is charged the size of
an object it may create plus its string's length, and memo indices may only count up (a `LONG_BINPUT`
of 2^28 made the standard unpickler grow its memo to 4 GB). A pickle over the budget is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from dataclasses import dataclass
from typing import Any

from runtime.errors import ModelFileError, UnsafePickleError

MAX_PICKLE_BYTES = 64 << 20  # a 14B model's data.pkl is about 100 KB
MAX_TENSORS = 100_000  # the largest RWKV-4 has about 600
# What unpickling may allocate, as charged by `_check_allocation` (a 14B model's data.pkl: ~2 MB).
MAX_UNPICKLE_BYTES = 128 << 20
_OPCODE_COST = 64  # bytes charged per opcode: a small tuple, list or dict it may create, a stack slot
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})

# torch's typed storage classes and the element type each holds.
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
UNTYPED_STORAGE = "UntypedStorage"
_MAX_DIMS = 64  # torch's own limit on tensor dimensions
_MAX_DIM = 1 << 48  # no size or stride of a real tensor comes near this

# Element types `_rebuild_tensor_v3` may name (torch.<dtype>); only recognised so they can be refused by
# name further on, except the three float types, which are read.
TORCH_DTYPES = frozenset(
    {
        "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
        "uint16", "uint32", "uint64", "complex32", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
        "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    }
)


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a torch storage class (`torch.FloatStorage`, `torch.storage.UntypedStorage`)."""

    name: str


@dataclass(frozen=True)
class TorchDType:
    """Stand-in for a torch dtype object (`torch.bfloat16`) as `_rebuild_tensor_v3` receives it."""

    name: str


@dataclass(frozen=True)
class StorageRef:
    """A storage as the persistent id describes it: its class, the zip member key, its length."""

    kind: str  # a key of STORAGE_DTYPES or UNTYPED_STORAGE
    key: str  # the member is <archive>/data/<key>
    location: str  # "cpu", "cuda:0", ...
    numel: int  # elements of the storage's type; bytes for an untyped storage

    @property
    def element_type(self) -> str | None:
        """The element type of a typed storage, None for an untyped one."""
        return STORAGE_DTYPES.get(self.kind)


@dataclass(frozen=True)
class TensorRecord:
    """What the pickle says about one tensor: a view of a storage."""

    storage: StorageRef
    storage_offset: int  # in elements of `dtype`
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements
    dtype: str  # torch dtype name, e.g. "bfloat16"


class _Marker:
    """An object the pickle may pass around but never call."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<{self.label}>"


def _empty_ordered_dict(*args: Any) -> dict:
    if args:
        raise pickle.UnpicklingError("OrderedDict() with arguments; torch.save passes none")
    return {}


def _check_int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise pickle.UnpicklingError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"{what} must be a tuple of at most {_MAX_DIMS} integers: {value!r:.80}")
    out = tuple(_check_int(v, what) for v in value)
    if any(v >= _MAX_DIM for v in out):
        raise pickle.UnpicklingError(f"{what} {out!r:.80} has an impossibly large entry")
    return out


def _check_hooks(hooks: Any) -> None:
    if hooks is not None and hooks != {}:
        raise pickle.UnpicklingError("tensor has backward hooks; a checkpoint of weights has none")


def _record(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> TensorRecord:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"tensor storage must be a persistent storage id, got {storage!r}")
    shape = _check_int_tuple(size, "tensor size")
    strides = _check_int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"tensor size {shape} and stride {strides} differ in length")
    if dtype is None:
        if storage.element_type is None:
            raise pickle.UnpicklingError("an untyped storage needs _rebuild_tensor_v3 with a dtype")
        dtype = storage.element_type
    return TensorRecord(storage, _check_int(offset, "storage offset"), shape, strides, dtype)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRecord:
    return _record(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any,
    requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None,
) -> TensorRecord:
    _check_hooks(backward_hooks)
    if metadata:
        raise pickle.UnpicklingError("tensor carries Python metadata; a checkpoint of weights has none")
    return _record(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
    backward_hooks: Any, dtype: Any, metadata: Any = None,
) -> TensorRecord:
    _check_hooks(backward_hooks)
    if metadata:
        raise pickle.UnpicklingError("tensor carries Python metadata; a checkpoint of weights has none")
    if not isinstance(dtype, TorchDType):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
    return _record(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> TensorRecord:
    _check_hooks(backward_hooks)
    if not isinstance(data, TensorRecord):
        raise pickle.UnpicklingError(f"parameter data must be a tensor, got {data!r}")
    return data


_ALLOWED_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _empty_ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles a state dict of tensors into `TensorRecord`s; refuses every other global."""

    def __init__(self, data: bytes, path: str | os.PathLike[str]) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_FUNCTIONS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "torch.storage" and name == UNTYPED_STORAGE:
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return TorchDType(name)
        raise UnsafePickleError(self.path, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelFileError(
                self.path,
                f"malformed storage id {_short(pid)}; expected ('storage', type, key, location, numel)",
            )
        _, kind, key, location, numel = pid
        if not isinstance(kind, StorageType):
            raise ModelFileError(self.path, f"storage id names {_short(kind)}, not a torch storage class")
        if not isinstance(key, str) or not key or "/" in key or "\\" in key or key in (".", ".."):
            raise ModelFileError(self.path, f"storage id has an invalid key {_short(key)}")
        if not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise ModelFileError(self.path, f"storage id {_short(pid)} has an invalid location or length")
        return StorageRef(kind.name, key, location, numel)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unpickle_state_dict(
    data: bytes, path: str | os.PathLike[str], max_tensors: int | None = None
) -> dict[str, TensorRecord]:
    """Describe the tensors of a checkpoint's `data.pkl` without executing anything it names.

    Raises UnsafePickleError for a global outside the allow-list and ModelFileError for anything else
    wrong: oversized or malformed pickle, a result that is not a flat dict of str → tensor, too many tensors.
    """
    limit = MAX_TENSORS if max_tensors is None else max_tensors
    if len(data) > MAX_PICKLE_BYTES:
        raise ModelFileError(
            path,
            f"data.pkl is {len(data)} bytes, more than the {MAX_PICKLE_BYTES} a state dict of tensors needs",
        )
    _check_allocation(data, path)
    try:
        obj = SafeUnpickler(data, path).load()
    except ModelFileError:
        raise
    except RecursionError:
        raise ModelFileError(path, "data.pkl is nested too deeply") from None
    except Exception as e:  # any failure inside the pickle machine is a malformed file
        raise ModelFileError(path, f"data.pkl is malformed: {type(e).__name__}: {e}") from None
    return _check_state_dict(obj, path, limit)


def _check_allocation(data: bytes, path: str | os.PathLike[str]) -> None:
    """ModelFileError unless unpickling `data` stays within MAX_UNPICKLE_BYTES and its memo indices
    only count up; reads the opcodes without building anything."""
    budget = MAX_UNPICKLE_BYTES
    charged = puts = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            charged += _OPCODE_COST
            if isinstance(arg, str):
                charged += 4 * len(arg)  # a str takes up to 4 bytes per character
            elif isinstance(arg, bytes | bytearray):
                charged += len(arg)
            elif isinstance(arg, int) and op.name.startswith("LONG") and op.name not in ("LONG_BINPUT", "LONG_BINGET"):
                charged += arg.bit_length() // 8
            if op.name in _MEMO_PUTS:
                index = puts if op.name == "MEMOIZE" else int(arg)
                if not 0 <= index <= puts:
                    raise ModelFileError(
                        path,
                        f"data.pkl is malformed: memo index {index} at byte {pos} skips ahead of the "
                        f"{puts} entries stored so far",
                    )
                puts += 1
            if charged > budget:
                raise ModelFileError(
                    path,
                    f"data.pkl would make the reader allocate more than {budget >> 20} MB (at byte {pos}); "
                    "a state dict of tensors needs far less, so the file is refused",
                )
    except ModelFileError:
        raise
    except Exception as e:  # an unknown opcode, a cut-off argument, a number too long to parse
        raise ModelFileError(path, f"data.pkl is malformed: {type(e).__name__}: {e}") from None


def _check_state_dict(obj: Any, path: str | os.PathLike[str], limit: int) -> dict[str, TensorRecord]:
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if len(obj) > limit:
        raise ModelFileError(path, f"the checkpoint holds {len(obj)} entries, more than the limit of {limit}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelFileError(path, f"tensor name {_short(key)} is not a string")
        if isinstance(value, dict):
            raise ModelFileError(
                path,
                f"entry '{key}' is a nested dict; expected a flat state dict of tensors as BlinkDL saves it "
                "(a training checkpoint wrapping one under 'state_dict' or 'model' is not supported)",
            )
        if not isinstance(value, TensorRecord):
            raise ModelFileError(path, f"entry '{key}' is {_short(value, 40)}, not a tensor")
    return obj
