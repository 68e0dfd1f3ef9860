"""A long fuzz campaign against every reader: counts of outcomes per format, peak memory, slowest case.

    nice python tools/fuzz_campaign.py [--cases 1000] [--formats gguf pth ...] [--timeout 20]
    python tools/fuzz_campaign.py --replay pth:123     # run one case in this process, with its traceback

The cases are tests/support/fuzz.py's (the suite's tests/test_fuzz.py runs a few hundred of them
in-process); here each runs in a forked process, so a crash, a hang (killed after --timeout
seconds) and the case's peak resident memory are seen. Outcomes: "ok" (read, converted, stepped,
finite output), the name of the project's error that refused the file, or a defect: "traceback:
<exception>", "crash: signal N", "hang". Defects are listed with the case to replay. Peak RSS counts
what the forked process inherits (the interpreter with numpy, about 40-60 MB) plus what the case
added; the target is 256 MB plus the file's size for a refused file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fuzz import FORMATS, Seed, make_seeds, mutate, run_case

SALT = "campaign"


@dataclass
class Tally:
    """What the cases of one format came to."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    peak_rss: int = 0  # bytes, any case
    peak_rss_refused: int = 0  # bytes, refused cases
    slowest: tuple[float, int, str] = (0.0, -1, "")
    defects: list[str] = field(default_factory=list)


def _in_child(fn, *args) -> int:
    """Fork; the child runs fn(*args) and exits. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(0)
    return pid


def _make_seeds(folder: Path, out: Path) -> None:
    out.write_bytes(pickle.dumps(make_seeds(folder)))


def _child(fmt: str, data: bytes, work: Path, seed_model: Path, write_fd: int) -> None:
    try:
        result = {"outcome": run_case(fmt, data, work, seed_model)}
    except BaseException as e:  # a defect: report it with the traceback's last lines
        result = {"outcome": f"traceback: {type(e).__name__}", "detail": traceback.format_exc()[-1500:]}
    os.write(write_fd, json.dumps(result).encode())


def run_one(
    fmt: str, case: int, seed: Seed, work: Path, seed_model: Path, timeout: float
) -> tuple[str, int, float, str]:
    """(outcome, peak RSS in bytes, seconds, detail) of one case in a forked process."""
    what, data = mutate(seed, case, SALT)
    work.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    t0 = time.perf_counter()
    pid = _in_child(_child, fmt, data, work, seed_model, write_fd)
    os.close(write_fd)
    chunks = []
    deadline = t0 + timeout
    hung = False
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    rss = usage.ru_maxrss * 1024
    for p in sorted(work.glob("*")):
        p.unlink()
    if hung:
        return "hang", rss, seconds, what
    if os.WIFSIGNALED(status):
        return f"crash: signal {os.WTERMSIG(status)}", rss, seconds, what
    if not chunks:
        return "crash: no report", rss, seconds, what
    result = json.loads(b"".join(chunks))
    detail = what + ("\n" + result["detail"] if "detail" in result else "")
    return result["outcome"], rss, seconds, detail


def _is_defect(outcome: str) -> bool:
    return outcome.startswith(("traceback", "crash", "hang"))


def campaign(formats: list[str], cases: int, timeout: float, work: Path) -> dict[str, Tally]:
    seeds_file = work / "seeds.pickle"
    pid = _in_child(_make_seeds, work / "seeds", seeds_file)
    os.waitpid(pid, 0)
    seeds: dict[str, Seed] = pickle.loads(seeds_file.read_bytes())
    seed_model = work / "seeds" / "seed.gguf"
    tallies: dict[str, Tally] = {}
    for fmt in formats:
        tally = tallies[fmt] = Tally()
        t0 = time.perf_counter()
        for case in range(cases):
            outcome, rss, seconds, detail = run_one(fmt, case, seeds[fmt], work / "case", seed_model, timeout)
            tally.outcomes[outcome] += 1
            tally.peak_rss = max(tally.peak_rss, rss)
            if outcome != "ok" and not _is_defect(outcome):
                tally.peak_rss_refused = max(tally.peak_rss_refused, rss)
            if seconds > tally.slowest[0]:
                tally.slowest = (seconds, case, detail.splitlines()[0])
            if _is_defect(outcome):
                tally.defects.append(f"{fmt}:{case} {outcome}: {detail}")
                print(f"DEFECT {fmt}:{case} {outcome}: {detail}", flush=True)
        print(f"{fmt}: {cases} cases in {time.perf_counter() - t0:.0f} s {dict(tally.outcomes)}", flush=True)
    return tallies


def table(tallies: dict[str, Tally]) -> str:
    outcomes = sorted({o for t in tallies.values() for o in t.outcomes}, key=lambda o: (o != "ok", o))
    head = ["format", *outcomes, "defects", "peak RSS", "peak RSS refused", "slowest"]
    rows = []
    for fmt, t in tallies.items():
        slow_s, slow_case, slow_what = t.slowest
        rows.append([
            fmt, *(str(t.outcomes.get(o, 0)) for o in outcomes), str(len(t.defects)),
            f"{t.peak_rss / 2**20:.0f} MB", f"{t.peak_rss_refused / 2**20:.0f} MB",
            f"{slow_s:.2f} s ({fmt}:{slow_case}, {slow_what[:60]})",
        ])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def replay(spec: str, work: Path) -> None:
    fmt, case = spec.split(":")
    seeds = make_seeds(work / "seeds")
    what, data = mutate(seeds[fmt], int(case), SALT)
    print(f"{fmt}:{case}: {what}")
    (work / "case").mkdir(exist_ok=True)
    print(run_case(fmt, data, work / "case", work / "seeds" / "seed.gguf"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1000, help="cases per format")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    p.add_argument("--replay", help="FORMAT:CASE, run in this process")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rwkv-fuzz-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RWKV_TUI_CACHE_DIR", str(work / "cache"))
        if args.replay:
            replay(args.replay, work)
            return 0
        t0 = time.perf_counter()
        tallies = campaign(args.formats, args.cases, args.timeout, work)
        print(f"\n{args.cases} cases per format in {time.perf_counter() - t0:.0f} s (timeout {args.timeout:g} s)\n")
        print(table(tallies))
        defects = [d for t in tallies.values() for d in t.defects]
        for d in defects:
            print("\n" + d)
        return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
