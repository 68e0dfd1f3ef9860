"""Benchmark tokenizer encoding: our World tokenizer against the `rwkv` package's, and our GPT-NeoX.

    python bench/tokenizer.py [--kb 300] [--rwkv-path SITE_PACKAGES]

The text (~300 KB of UTF-8) mixes English lines (source and docstrings of a few standard-library
modules, so it is the same for a given Python) and Chinese sentences, picked with a fixed seed. The
reference is `rwkv.rwkv_tokenizer.TRIE_TOKENIZER` (pure Python) on the same vocabulary file; it is
used only if `rwkv` can be imported, or found under --rwkv-path (a site-packages folder holding it,
e.g. /work/refvenv/lib/python3.11/site-packages: appended to sys.path, so only packages missing here
come from there; `rwkv.rwkv_tokenizer` itself imports nothing). Prints MB/s (of UTF-8 input) for
each, whether the ids agree, and the speed ratio.
"""

from __future__ import annotations

import argparse
import difflib
import random
import sys
import textwrap
import time
import unittest.case
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.text.tokenizer_world import WORLD_VOCAB  # noqa: E402
from runtime.text.tokenizers import load_tokenizer  # noqa: E402

CHINESE = (
    "清晨的雾气还没有散去，山脚下的小镇已经热闹起来。卖豆浆的老人推着车走过石板路，孩子们背着书包跑向学校。"
    "河对岸的工厂响起了汽笛声，工人们排着队走进大门。这是一个普通的星期一，却也是许多人新生活的开始。"
    "语言模型通过阅读大量文本来学习词语之间的关系。它并不真正理解世界，但能够根据上下文预测下一个词。"
    "循环神经网络把过去的信息压缩进一个固定大小的状态里，因此推理时的内存占用不会随着对话变长而增加。"
    "我们在本地电脑上运行模型，不需要联网，也不会把对话内容发送给任何服务器。保存每一轮对话之后的状态，"
    "就能在下次打开程序时立刻继续聊天，而不必重新读取之前的全部内容。"
    "今天的天气预报说下午会有雷阵雨，请记得带伞。图书馆周末开放到晚上九点，欢迎大家前来借阅。"
    "他把茶杯放在桌上，望着窗外的竹林，沉默了很久才开口说话：“这件事情，我们还需要再想一想。”"
)


def make_text(kb: int, seed: int = 0) -> str:
    """About `kb` KB of UTF-8, alternating English lines and Chinese sentences at random."""
    english: list[str] = []
    for module in (argparse, difflib, textwrap, unittest.case):
        path = Path(module.__file__)
        english += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    chinese = [s + "。" for s in CHINESE.split("。") if s]
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < kb * 1000:
        piece = rng.choice(english) if rng.random() < 0.5 else "".join(rng.choices(chinese, k=rng.randint(1, 3)))
        parts.append(piece + "\n")
        size += len(parts[-1].encode("utf-8"))
    return "".join(parts)


def best_time(fn: Callable[[], object], min_time: float, min_runs: int = 3) -> float:
    best, total, runs = float("inf"), 0.0, 0
    while total < min_time or runs < min_runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def load_reference(rwkv_path: str | None) -> type | None:
    try:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    except ImportError:
        if not rwkv_path:
            return None
        sys.path.append(rwkv_path)
        try:
            from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
        except ImportError:
            return None
    return TRIE_TOKENIZER


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", type=int, default=300, help="size of the text in KB (default 300)")
    ap.add_argument("--rwkv-path", help="site-packages folder holding the `rwkv` package")
    args = ap.parse_args()

    text = make_text(args.kb)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"text: {mb * 1000:.0f} KB UTF-8, {len(text)} characters")

    t0 = time.perf_counter()
    world = load_tokenizer("world")
    print(f"ours  World load        {time.perf_counter() - t0:7.3f} s")
    ours_ids = world.encode(text)
    ours_t = best_time(lambda: world.encode(text), 1.0)
    print(f"ours  World encode      {mb / ours_t:7.2f} MB/s  ({len(ours_ids)} tokens, best of runs)")
    dec_t = best_time(lambda: world.decode(ours_ids), 0.5)
    print(f"ours  World decode      {mb / dec_t:7.2f} MB/s")

    reference = load_reference(args.rwkv_path)
    if reference is None:
        print("rwkv package not found: no reference figures (pass --rwkv-path)")
    else:
        t0 = time.perf_counter()
        ref = reference(str(WORLD_VOCAB))
        print(f"rwkv  World load        {time.perf_counter() - t0:7.3f} s")
        ref_ids = ref.encode(text)
        ref_t = best_time(lambda: ref.encode(text), 2.0)
        print(f"rwkv  World encode      {mb / ref_t:7.2f} MB/s  ({len(ref_ids)} tokens, best of runs)")
        print(f"ids identical: {ref_ids == ours_ids}")
        print(f"World encode speed-up: {ref_t / ours_t:.1f}x")

    t0 = time.perf_counter()
    neox = load_tokenizer("20b")
    print(f"ours  NeoX  load        {time.perf_counter() - t0:7.3f} s")
    neox_ids = neox.encode(text)
    neox_t = best_time(lambda: neox.encode(text), 1.0)
    print(f"ours  NeoX  encode      {mb / neox_t:7.2f} MB/s  ({len(neox_ids)} tokens, `tokenizers` library)")


if __name__ == "__main__":
    main()
