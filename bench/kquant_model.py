"""Write K-quant copies of a GGUF model for benchmarks: its big matrices (layers and head) as random
valid Q2_K … Q6_K super-blocks with the spread of the originals, everything else copied (no quantizer
needed; tests/support/kquant_blocks.py).

    python bench/kquant_model.py model-q5_1.gguf --types q4_k,q6_k --dir /tmp/kq
    rwkv-tui bench /tmp/kq/model-q4_k.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.quant.types import DType
from tests.support.kquant_blocks import k_quant_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a GGUF model (any matrix types)")
    ap.add_argument("--types", default="q4_k,q5_k,q6_k,q3_k,q2_k")
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    stem = args.model.stem.rsplit("-", 1)[0]
    for name in args.types.split(","):
        dtype = DType.parse(name)
        out = args.dir / f"{stem}-{dtype.name.lower()}.gguf"
        replaced = k_quant_pair(args.model, out, None, dtype)
        print(f"{out}: {len(replaced)} matrices as {dtype.name}, {out.stat().st_size / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
