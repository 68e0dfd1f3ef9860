"""`rwkv-tui convert SRC DST --type TYPE`: any supported checkpoint to GGUF, with a progress bar."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui.commands.options import thread_count
from tui.commands.output import console, err_console
from tui.units import human_bytes


def cmd_convert(args: argparse.Namespace) -> int:
    from runtime.convert import convert
    from tui.progress_view import rich_progress

    with rich_progress(err_console) as progress:
        result = convert(
            args.src, args.dst, args.type, head_dtype=args.head_type, progress=progress, threads=args.threads,
            calibrate=args.calibrate,
        )
    console.print(
        f"wrote {result.path} ({human_bytes(result.nbytes)}, {result.target}: layers {result.dtype.name}, head "
        f"{result.head_dtype.name}) in {result.seconds:.1f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="convert a .pth/.safetensors/rwkv.cpp .bin/GGUF model to GGUF")
    c.add_argument("src", type=Path, help="source model file (or a folder of Hugging Face shards)")
    c.add_argument("dst", type=Path, help="output .gguf file")
    c.add_argument("--type", default="q5_k_m",  # runtime.registry.recommend.DEFAULT_FORMAT above 1B parameters
                   help="type of the layer matrices: f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0, or a K-quant mix "
                        "chosen per tensor as llama.cpp does: q6_k, q5_k_m, q5_k_s, q5_k, q4_k_m, q4_k_s, q4_k, "
                        "q3_k, q2_k (default: %(default)s)")
    c.add_argument("--head-type", default=None, help="type of the output head (default: chosen per --type)")
    c.add_argument("--calibrate", type=Path, default=None, metavar="TEXT",
                   help="read this text with the model first and quantize weighted by the activations it "
                        "produces (llama.cpp's importance matrix): better quality at the same size")
    c.add_argument("--threads", type=thread_count, default=None, help="quantization threads (default: all cores)")
    c.set_defaults(func=cmd_convert)
