"""Crash safety: SIGKILL a process that is saving turns, many times, at random moments.

After every kill the database must open, pass SQLite's integrity and foreign-key checks, and hold
every turn the writer reported saved, with its text and its states intact (the writer derives both
from the turn's seq, see `crash_writer.py`). Some kills land during start-up or the first open.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.chat.store import ConversationStore
from tests.chat.crash_writer import FP, FP2, TITLE, turn_state, turn_text

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")
RUNS = 15
# Kill times come from this seed, so a failure replays; RWKV_TUI_CRASH_SEED explores other moments.
SEED = int(os.environ.get("RWKV_TUI_CRASH_SEED", "20261205"))

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


class _Expected:
    """sha256 of the state the writer saves for (seq, fingerprint), computed once per turn."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str], str] = {}

    def __call__(self, seq: int, fp: str) -> str:
        key = (seq, fp)
        if key not in self._cache:
            self._cache[key] = hashlib.sha256(turn_state(seq, fp)).hexdigest()
        return self._cache[key]


def _run_writer(db: Path, rng: random.Random, during_startup: bool) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, str(WRITER), str(db)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if during_startup:
            time.sleep(rng.uniform(0.0, 0.35))
        else:
            first = p.stdout.readline()
            assert first == b"ready\n", f"writer failed to start: {first!r} {p.stderr.read().decode()[-2000:]}"
            time.sleep(rng.uniform(0.0, 0.12))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL, f"writer ended by itself ({p.returncode}): {err.decode()[-2000:]}"
    return [line for line in out.decode().splitlines(keepends=True) if line.endswith("\n")]


def _check(db: Path, reported: dict[int, list], new: set[int], expected: _Expected, full: bool) -> None:
    with ConversationStore.open(db) as store:  # always opens
        assert store.integrity_check() == []
        convs = [c for c in store.list_conversations(include_archived=True) if c.title == TITLE]
        if not convs:
            assert not reported
            return
        (conv,) = convs
        msgs = store.messages(conv.id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        by_seq = {m.seq: m for m in msgs}
        for seq, (mid, _) in reported.items():
            assert seq in by_seq and by_seq[seq].id == mid, f"turn {seq} was reported saved but is gone"
        for m in msgs[1:]:
            assert (m.content, m.n_tokens, m.complete) == (turn_text(m.seq), m.seq, m.seq % 5 != 0)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            rows = c.execute(
                "SELECT m.seq, ts.fingerprint, ts.state_hash "
                "FROM turn_states ts JOIN messages m ON m.id = ts.message_id"
            ).fetchall()
        c.close()
        held = {(seq, fp): h for seq, fp, h in rows}
        for m in msgs:  # the FP state is written with its message; FP2 once reported, or if it got in
            assert held.get((m.seq, FP)) == expected(m.seq, FP), f"state of turn {m.seq} lost or wrong"
            if m.seq > 0 and (reported.get(m.seq, [0, False])[1] or (m.seq, FP2) in held):
                assert held.get((m.seq, FP2)) == expected(m.seq, FP2), f"second state of turn {m.seq} wrong"
        # decode the blobs written in this run (all of them at the end): they give back the exact bytes
        last = msgs[-1].seq
        for seq in sorted(by_seq) if full else sorted(new | {last}):
            mid = by_seq[seq].id
            for fp in (FP, FP2):
                if (seq, fp) in held:
                    assert store.load_state(mid, fp) == turn_state(seq, fp)


def test_killed_writer_never_loses_a_saved_turn(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    seed = SEED
    rng = random.Random(seed)
    expected = _Expected()
    reported: dict[int, list] = {}  # seq -> [message id, second state saved]
    for run in range(RUNS):
        lines = _run_writer(db, rng, during_startup=run % 5 == 0)
        new: set[int] = set()
        for line in lines:
            tag, *rest = line.split()
            if tag in ("saved", "saved2"):
                seq, mid = int(rest[0]), int(rest[1])
                entry = reported.setdefault(seq, [mid, False])
                assert entry[0] == mid
                entry[1] = entry[1] or tag == "saved2"
                new.add(seq)
        try:
            _check(db, reported, new, expected, full=run == RUNS - 1)
        except AssertionError as e:
            raise AssertionError(f"after kill {run + 1} (RWKV_TUI_CRASH_SEED={seed}): {e}") from e
    assert len(reported) >= 3  # the writer did get work done between kills
