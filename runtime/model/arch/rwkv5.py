"""RWKV-5.2 ("Eagle", x052): RWKV-6 without the data-dependent token shift and decay, run by
arch/rwkv6.py's code with `ModelSpec.version` "5.2" (fixed mixes time_mix_k/v/r/g, the decay
exp(−exp(time_decay)) one per channel, the same WKV, GroupNorm (eps 64e-5), gate and FFN).

RWKV-5.0 and 5.1 (one decay per head) are refused by detect.py.
"""

from __future__ import annotations

from runtime.model.arch.rwkv6 import (
    MAT_TENSOR_NAMES,
    Mat,
    ModelSpec,
    build_forward_module,
    layer_weights,
    new_state_data,
    params,
    spec_for,
)

NAME = "rwkv5"
VERSION = "5.2"
LAYER_MATRICES = tuple(MAT_TENSOR_NAMES[m] for m in Mat if m not in (Mat.MAA_W1, Mat.MAA_W2, Mat.DECAY_W1,
                                                                      Mat.DECAY_W2))

__all__ = ["LAYER_MATRICES", "NAME", "VERSION", "ModelSpec", "build_forward_module", "layer_weights",
           "new_state_data", "params", "spec_for"]
