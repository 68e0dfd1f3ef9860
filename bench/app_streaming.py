"""How fast the app streams a reply, next to `rwkv-tui chat` and `rwkv-tui bench`'s decode rate.

    python bench/app_streaming.py [--model FILE] [--rounds 3] [--tokens 200] [--app NAME=TREE ...]

Without --model it writes (once) a random RWKV-4 model of the 1.5B shape, 24 × 2048, Q5_1, to
bench/out/ (bench/make_models.py; about 1.4 GB). Each round measures, one after the other on the
same file:

- bench: `rwkv-tui bench`'s decode measurement (median ms of one decoded token), as tokens/s;
- chat:  `rwkv-tui chat` piped one message; the tokens/s it prints after the reply;
- app:   the full-screen app in a real terminal (tmux, 130 × 40): the message is typed, and the
         reply's tokens/s is read off the status line when it ends. Every `--app NAME=TREE` runs
         the app from that source tree (e.g. a checkout of the commit before a change), so a
         change is measured side by side with what it replaced, interleaved round by round.

Replies are `--tokens` long (a family without stop strings; a random model rarely ends early). The
conversations, registry and families live in a temporary folder; compiled kernels are cached in
bench/out/kernel-cache. Figures, not pass/fail: on a busy machine compare only the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODEL_ID = "bench-stream"
PROMPT = "Tell me a long story about a lighthouse keeper."
COLUMNS, ROWS = 130, 40

FAMILY = """
[family.benchchat]
description = "Benchmark chat (no stop strings)"
mode = "chat"
tokenizer = "20b"
init = "A chat.\\n\\n"
user = "User: {{message}}\\n\\nAssistant:"
separator = "\\n\\n"
stop = []

[family.benchchat.sampling]
temperature = 1.0
top_p = 0.9
max_tokens = {tokens}
"""

_DECODE = """
import sys
from runtime.bench import _decode_ms
from runtime.model.model import load_model
model = load_model(sys.argv[1], threads=int(sys.argv[2]) if sys.argv[2] != "0" else None)
print(1000 / _decode_ms(model, int(sys.argv[3])))
"""

_REGISTER = """
import sys
from runtime.registry.catalog import save_user_entry
from runtime.model.model import load_model
m = load_model(sys.argv[1])
save_user_entry({"id": sys.argv[2], "name": "Bench stream", "family": "benchchat", "arch": "4",
                 "n_layer": m.n_layer, "n_embd": m.n_embd, "vocab": m.n_vocab,
                 "file": m.path.name, "path": str(m.path)})
"""


def default_model() -> Path:
    path = OUT / "rwkv4-24x2048-q5_1.bin"
    if not path.exists():
        print(f"writing {path} (random weights, 1.5B shape)…", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_models.py"), "--layers", "24", "--embd", "2048",
                        "--types", "q5_1", "--dir", str(OUT)], check=True)
    return path


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


class Bench:
    def __init__(self, model: Path, tokens: int, threads: int, home: Path) -> None:
        self.model = model
        self.tokens = tokens
        self.threads = threads
        self.socket = f"rwkv-bench-{os.getpid()}"
        self.verbose = False
        self.runs = 0
        self.ui_share = 0.0
        self.env = dict(os.environ, RWKV_TUI_DATA_DIR=str(home / "data"), RWKV_TUI_CONFIG_DIR=str(home / "config"),
                        RWKV_TUI_CACHE_DIR=str(OUT / "kernel-cache"))
        (home / "config").mkdir(parents=True)
        (home / "config" / "models.toml").write_text(FAMILY.format(tokens=tokens), encoding="utf-8")
        self.python(ROOT, "-c", _REGISTER, str(model), MODEL_ID)

    def python(self, tree: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=tree, env=self.env, input=stdin, capture_output=True,
                              text=True, check=True)

    def decode_rate(self, steps: int) -> float:
        out = self.python(ROOT, "-c", _DECODE, str(self.model), str(self.threads), str(steps))
        return float(out.stdout.split()[-1])

    def chat_rate(self) -> float:
        args = ["-m", "tui.cli", "chat", str(self.model), "--family", "benchchat", "--max-tokens", str(self.tokens)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        out = self.python(ROOT, *args, stdin=PROMPT + "\n")
        found = re.findall(r"(\d+) tokens, ([\d.]+) tokens/s", out.stderr)
        if not found:
            raise RuntimeError(f"no rate in the chat's output:\n{out.stderr[-2000:]}")
        return float(found[-1][1])

    # --- the app in tmux -------------------------------------------------------------------------

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True).stdout

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "app").splitlines()

    def status_line(self) -> str:
        lines = [line for line in self.screen() if "state:" in line or "writing" in line or "tok/s" in line]
        return lines[-1] if lines else ""

    def wait(self, ready, what: str, timeout: float, poll: float = 0.5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.status_line()
            if ready(line):
                return line
            time.sleep(poll)
        raise RuntimeError(f"the app did not get {what} in {timeout:.0f} s; its screen:\n" + "\n".join(self.screen()))

    def app_rate(self, tree: Path) -> float:
        self.runs += 1
        data = Path(self.env["RWKV_TUI_DATA_DIR"]) / f"app-{self.runs}"  # no tabs of earlier runs to reopen
        env = " ".join(f"{k}={v}" for k, v in {**self.env, "RWKV_TUI_DATA_DIR": str(data)}.items()
                       if k.startswith("RWKV_TUI_"))
        command = f"cd {tree} && exec env {env} {sys.executable} -m tui.cli --model {MODEL_ID}"
        self.tmux("kill-server")
        self.tmux("new-session", "-d", "-s", "app", "-x", str(COLUMNS), "-y", str(ROWS), command)
        try:
            self.wait(lambda s: "state:" in s and "loading" not in s, "its model loaded", 600)
            time.sleep(1.0)
            pid = int(self.tmux("list-panes", "-t", "app", "-F", "#{pane_pid}").split()[0])
            before, t0 = thread_cpu(pid), time.monotonic()
            self.tmux("send-keys", "-t", "app", "-l", PROMPT)
            deadline = time.monotonic() + 60
            while PROMPT not in "\n".join(self.screen()) and time.monotonic() < deadline:
                time.sleep(0.2)
            self.tmux("send-keys", "-t", "app", "Enter")
            self.wait(lambda s: "writing" in s or "reading" in s, "to the reply", 120, poll=0.1)
            line = self.wait(lambda s: "tok/s" in s and "writing" not in s and "reading" not in s,
                             "to the end of the reply", 1200, poll=1.0)
            after, seconds = thread_cpu(pid), time.monotonic() - t0
            self.ui_share = (after.get(pid, 0.0) - before.get(pid, 0.0)) / seconds
            if self.verbose:
                used = sorted(((after[t] - before.get(t, 0.0), t) for t in after), reverse=True)
                print("  threads' CPU s: " + ", ".join(f"{t}{'(main)' if t == pid else ''} {c:.2f}"
                                                     for c, t in used if c > 0.005) + f" over {seconds:.1f} s")
            return float(re.findall(r"([\d.]+) tok/s", line)[-1])
        finally:
            self.tmux("kill-server")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a model file (default: a 1.5B-shaped Q5_1 one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200, help="reply length")
    ap.add_argument("--steps", type=int, default=64, help="decode steps of the bench measurement")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all cores, as each tool does)")
    ap.add_argument("--apps-only", action="store_true", help="only the app runs (no bench or chat; no ratios)")
    ap.add_argument("--verbose", action="store_true", help="print each app thread's CPU time per reply")
    ap.add_argument("--app", action="append", default=[], metavar="NAME=TREE",
                    help="also run the app from this source tree (repeatable); the current tree is 'app'")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is needed to run the app in a real terminal", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from runtime.machine import cpu_name

    model = args.model or default_model()
    apps = {"app": ROOT}
    for spec in args.app:
        name, _, tree = spec.partition("=")
        apps[name] = Path(tree).resolve()
    print(f"{model.name}  ·  CPU: {cpu_name()}, {os.cpu_count()} logical cores  ·  {args.tokens}-token replies, "
          f"{args.rounds} rounds", flush=True)
    references = [] if args.apps_only else ["bench", "chat"]
    rates: dict[str, list[float]] = {name: [] for name in [*references, *apps]}
    ui: dict[str, list[float]] = {name: [] for name in apps}
    with tempfile.TemporaryDirectory(prefix="rwkv-app-streaming-") as home:
        b = Bench(model, args.tokens, args.threads, Path(home))
        b.verbose = args.verbose
        for r in range(args.rounds):
            if not args.apps_only:
                rates["bench"].append(b.decode_rate(args.steps))
                rates["chat"].append(b.chat_rate())
            order = list(apps) if r % 2 == 0 else list(reversed(apps))
            for name in order:
                rates[name].append(b.app_rate(apps[name]))
                ui[name].append(b.ui_share)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " tok/s", flush=True)
    yardstick = next(iter(rates))  # bench, or the first app with --apps-only
    bench = statistics.median(rates[yardstick])
    print(f"\nmedian tokens/s over {args.rounds} rounds (each run: {', '.join(rates)})")
    for name, values in rates.items():
        runs = " ".join(f"{v:.1f}" for v in values)
        share = f"   UI thread {100 * statistics.median(ui[name]):.0f}% of a core" if name in ui else ""
        median = statistics.median(values)
        print(f"  {name:<8} {median:6.1f}   {100 * median / bench:5.1f}% of {yardstick}   runs: {runs}{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
