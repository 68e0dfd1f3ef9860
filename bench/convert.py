"""Convert a generated checkpoint of a real model's shape and report input GB/s and peak RSS.

    python bench/convert.py                      # 7B shape (32 × 4096, vocab 50277, ~14.8 GB bf16) → Q5_1
    python bench/convert.py --layers 12 --embd 768 --type q8_0 --dir /tmp/b169
    python bench/convert.py --numpy              # the same through the numpy codec only, for comparison
    python bench/convert.py --hash 4             # sha256 of the first 4 GB with several read sizes
    python bench/convert.py --code /tmp/before   # convert with another checkout (git archive HEAD | tar -x)

The checkpoint is written once (random values in BlinkDL's layout, streamed: the generator never
holds a whole tensor) and reused. Each run converts it in a child process with `rwkv-tui convert`
and reads that child's peak RSS and CPU time (user, system) from the kernel (wait4); the output is
deleted afterwards unless --keep. Beside it, the same file is read raw (`cat`-like, 8 MiB reads) so
the convert rate can be compared with what the disk gives. With --cold (needs root) the page cache
is dropped before each timed read, as on a first conversion. On a shared machine, CPU times are the
steadier figure; repeat runs and report ranges.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.torch_writer import Generated, write_pth


def shapes(n_layer: int, n_embd: int, n_vocab: int) -> dict[str, tuple[tuple[int, ...], float, float]]:
    """name → (shape, mean, spread) for a RWKV-4 checkpoint, in BlinkDL's order."""
    C, F = n_embd, 4 * n_embd
    out: dict[str, tuple[tuple[int, ...], float, float]] = {"emb.weight": ((n_vocab, C), 0.0, 0.1)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            out[p + "ln0.weight"] = ((C,), 1.0, 0.1)
            out[p + "ln0.bias"] = ((C,), 0.0, 0.05)
        for ln in ("ln1", "ln2"):
            out[p + ln + ".weight"] = ((C,), 1.0, 0.1)
            out[p + ln + ".bias"] = ((C,), 0.0, 0.05)
        out[p + "att.time_decay"] = ((C,), -1.0, 1.5)
        out[p + "att.time_first"] = ((C,), 0.2, 0.4)
        for m in ("k", "v", "r"):
            out[p + f"att.time_mix_{m}"] = ((1, 1, C), 0.5, 0.2)
        for m in ("key", "value", "receptance", "output"):
            out[p + f"att.{m}.weight"] = ((C, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "ffn.time_mix_k"] = ((1, 1, C), 0.5, 0.2)
        out[p + "ffn.time_mix_r"] = ((1, 1, C), 0.5, 0.2)
        out[p + "ffn.key.weight"] = ((F, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "ffn.receptance.weight"] = ((C, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "ffn.value.weight"] = ((C, F), 0.0, 0.5 / np.sqrt(F))
    out["ln_out.weight"] = ((C,), 1.0, 0.1)
    out["ln_out.bias"] = ((C,), 0.0, 0.05)
    out["head.weight"] = ((n_vocab, C), 0.0, 1.0 / np.sqrt(C))
    return out


def generate(path: Path, n_layer: int, n_embd: int, n_vocab: int) -> None:
    def maker(seed: int, mean: float, spread: float):
        def make(start: int, count: int) -> np.ndarray:
            rng = np.random.default_rng((seed, start))
            return rng.standard_normal(count, dtype=np.float32) * np.float32(spread) + np.float32(mean)

        return make

    sd = {
        name: Generated(shape, maker(i, mean, spread))
        for i, (name, (shape, mean, spread)) in enumerate(shapes(n_layer, n_embd, n_vocab).items())
    }
    tmp = path.with_suffix(".part")
    write_pth(tmp, sd, "bfloat16", archive=path.stem)
    os.replace(tmp, path)


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def raw_read(path: Path) -> float:
    """Seconds to read `path` start to end in 8 MiB reads."""
    buf = bytearray(8 << 20)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def timed_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, float, float]:
    """(seconds, peak RSS in MB, exit status, user CPU s, system CPU s) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime, usage.ru_stime


def hash_blocks(path: Path, limit: int) -> None:
    """CPU and wall time of sha256 over the first `limit` bytes of `path` for several read sizes."""
    import hashlib

    for block in (8 << 20, 1 << 20, 256 << 10, 64 << 10):
        h = hashlib.sha256()
        buf = bytearray(block)
        view = memoryview(buf)
        got = 0
        t0, c0 = time.perf_counter(), os.times()
        with open(path, "rb", buffering=0) as f:
            while got < limit and (n := f.readinto(buf)):
                h.update(view[: min(n, limit - got)])
                got += n
        wall, c1 = time.perf_counter() - t0, os.times()
        print(
            f"sha256 with {block >> 10:5d} KiB reads: {got / wall / 1e9:5.2f} GB/s, CPU user "
            f"{c1.user - c0.user:5.2f} s + sys {c1.system - c0.system:5.2f} s for {got / 1e9:.1f} GB"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--embd", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--type", default="q5_1")
    ap.add_argument("--dir", type=Path, default=Path("/work/bench7b"))
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each timed read (root)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the converted file (default: delete it)")
    ap.add_argument("--hash", type=float, default=0, metavar="GB",
                    help="only time sha256 of the first GB of the source with several read sizes")
    ap.add_argument("--numpy", action="store_true",
                    help="convert through the numpy codec only (RWKV_TUI_NATIVE_QUANTIZE=0), for comparison")
    ap.add_argument("--code", type=Path, default=None,
                    help="run the converter from this source tree instead (PYTHONPATH), for before/after figures")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"rwkv4-{args.layers}x{args.embd}-random.pth"
    if not src.exists():
        t0 = time.perf_counter()
        generate(src, args.layers, args.embd, args.vocab)
        print(f"generated {src} in {time.perf_counter() - t0:.0f} s")
    size = src.stat().st_size
    print(f"source {src.name}: {size / 1e9:.2f} GB bf16, {args.layers} × {args.embd}, vocab {args.vocab}")
    if args.hash:
        hash_blocks(src, int(args.hash * 1e9))
        return 0

    if args.cold and not drop_caches():
        print("cannot drop the page cache (not root): timing with whatever is cached")
    read_s = raw_read(src)
    print(f"raw read of the source:      {read_s:6.1f} s  {size / read_s / 1e9:5.2f} GB/s")

    dst = args.dir / f"{src.stem}-{args.type}.gguf"
    exe = Path(sys.executable).with_name("rwkv-tui")
    cmd = [str(exe), "convert", str(src), str(dst), "--type", args.type]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if args.numpy:
        env["RWKV_TUI_NATIVE_QUANTIZE"] = "0"
    if args.code:
        env["PYTHONPATH"] = str(args.code.resolve())
    if args.cold:
        drop_caches()
    seconds, rss_mb, rc, user, system = timed_child(cmd, env)
    if rc:
        print(f"convert failed with status {rc}")
        return rc
    print(
        f"convert to {args.type}{' (numpy)' if args.numpy else ''}{f' ({args.code})' if args.code else ''}: "
        f"{seconds:6.1f} s  "
        f"{size / seconds / 1e9:5.2f} GB/s input (ratio to raw read {read_s / seconds:.2f}), "
        f"peak RSS {rss_mb:.0f} MB, CPU user {user:.1f} s + sys {system:.1f} s, "
        f"output {dst.stat().st_size / 1e9:.2f} GB"
    )
    if not args.keep:
        dst.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
