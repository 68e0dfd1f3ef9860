"""One module per RWKV architecture, and the registry from a file's architecture to its module.

Each module (rwkv4.py, rwkv5.py, rwkv6.py, rwkv7.py) says, over the shared kernels and the skeleton in base.py:
- `NAME` ("rwkv4") and `VERSION` (detect.Architecture.version, "4"), `LAYER_MATRICES` (tensor
  suffixes of the matrices a decode step reads, for `bench`);
- `spec_for(path, ckpt, emb_type, head_type, chunk)`: its spec (dimensions, each matrix's type), a
  frozen dataclass with `state_shape`, `scratch_floats`, `params_floats`, `weight_slots`, …;
- `layer_weights(ckpt, spec, layer)`: the tensors whose addresses fill a layer's weight slots (None
  for an unused slot), `params(ckpt, spec)`: its float32 parameter block;
- `new_state_data(spec)`: a fresh state's rows; `build_forward_module(spec)`: the IR module.
"""

from __future__ import annotations

from types import ModuleType

from runtime.model.arch import rwkv4, rwkv5, rwkv6, rwkv7

ARCHITECTURES: dict[str, ModuleType] = {m.VERSION: m for m in (rwkv4, rwkv5, rwkv6, rwkv7)}


def arch_module(version: str) -> ModuleType | None:
    """The module running detect.Architecture.version `version`, or None if none does."""
    return ARCHITECTURES.get(version)
