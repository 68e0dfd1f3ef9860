"""Writer process for the crash-safety test: saves turns with states in a loop until it is killed.

    python tests/chat/crash_writer.py DB_PATH

Every turn's text and states are derived from its seq, so the test can check any turn it finds.
After `add_message` returns it prints "saved SEQ MESSAGE_ID"; after it also saves the turn's state
for a second model, "saved2 SEQ MESSAGE_ID" (each line flushed at once).
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from runtime.chat.store import ConversationStore
from runtime.model.state import State

TITLE = "crash test"
FP = "c3" * 32
FP2 = "d4" * 32
SHAPE = (60, 768)  # the 169M model's state: 184 KB raw


def turn_text(seq: int) -> str:
    letters = hashlib.sha256(str(seq).encode()).hexdigest()
    return f"turn {seq}: " + " ".join(letters[i : i + 5] for i in range(0, 5 * (2 + seq % 9), 5))


def turn_state(seq: int, fingerprint: str) -> bytes:
    rng = np.random.default_rng([seq, int(fingerprint[:2], 16)])
    data = rng.standard_normal(SHAPE, dtype=np.float32)
    data[2::5] = np.abs(data[2::5]) * 10  # bb rows are positive and larger, like a real state's
    return State(data, fingerprint).to_bytes()


def main(path: str) -> None:
    store = ConversationStore.open(path)
    conv = next((c for c in store.list_conversations(include_archived=True) if c.title == TITLE), None)
    if conv is None:
        conv = store.create_conversation(title=TITLE, mode="chat", family="raven", model_ref="crash.gguf",
                                         sampling={}, init_text="init", init_state=(FP, turn_state(0, FP)))
    seq = store.messages(conv.id)[-1].seq + 1
    print("ready", flush=True)
    while True:
        role = "user" if seq % 2 else "assistant"
        m = store.add_message(conv.id, role=role, content=turn_text(seq), n_tokens=seq, complete=seq % 5 != 0,
                              state=(FP, turn_state(seq, FP)))
        print(f"saved {seq} {m.id}", flush=True)
        store.save_state(m.id, FP2, turn_state(seq, FP2))
        print(f"saved2 {seq} {m.id}", flush=True)
        seq += 1


if __name__ == "__main__":
    main(sys.argv[1])
