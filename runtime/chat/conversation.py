"""A conversation bound to a loaded model, with the model state saved after every message.

    store = ConversationStore.open()
    conv = Conversation.start(store, model, family="raven")
    reply = conv.send("What is RWKV?", on_text=print)      # streams, then saves the turn
    conv.regenerate()                                     # from the state before the reply: 0 tokens re-read
    conv = Conversation.resume(store, conv.id, model)     # later: 0 tokens re-read

The context is always `family.fed_text` of the messages in order (init, user turns, replies each
followed by the family's separator). Each message row carries the state after it, keyed by the model's
fingerprint and the family (`state_key`), so a conversation moved to another model gets a state of its
own, built by reading the transcript once, and the first model's states stay valid.

A reply stops at end-of-text, at the family's stop strings (or the user's), at max_tokens, or when
cancelled. At a stop string the text before it is kept and the state is rewound to the last token
boundary before it; what lies between that boundary and the stop, plus the separator, is then fed, so
the state after a reply is exactly "everything before + reply + separator". A cancelled or cut reply
keeps its partial text and state, marked incomplete; the separator is fed before the next message.

A kill can land at any moment, so what is saved when: the user's message and its state before the
reply starts; the reply's streamed text, without a state, at its first text and then every
`DRAFT_INTERVAL_S` (a killed reply is found as a cut-short one, its state rebuilt by reading it); the
finished reply with its state. `regenerate` and `continue_reply` also work when the last message is
the user's (its reply was never saved).

A saved state that fails any check when it is loaded (its type, size, checksum, compression, the
model's fingerprint, shape, finite values in range) is set aside for good (`set_aside_state`) and
rebuilt by reading the transcript from the nearest sound state, as for a missing one; `take_notices`
gives the UI a line saying so, with the number of tokens read again.

Thinking families (G1): the conversation's switch (`think`, saved with it) picks how each user turn's
prompt ends, and the choice is saved with that turn and its reply, so re-reading feeds the same text.
Inside the think block nothing but max_tokens or a cancel ends a reply: no stop string, and
end-of-text is not sampled there.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.chat.store import ConversationStore, MessageRecord, StateCorruptError
from runtime.errors import CancelledError, RwkvError
from runtime.model.model import Model
from runtime.model.state import State, StateError
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.settings import load_settings
from runtime.text.reply_parts import ReplyStream
from runtime.text.sampling import Sampler, SamplingSettings, penalty_weights
from runtime.text.templates import Family, get_family
from runtime.text.utf8_stream import text_to_utf8

TextCallback = Callable[[str], None]
INGEST_CHUNK = 256  # tokens per native call while reading a transcript (progress and cancel in between)
_REWIND_DEPTH = 32  # at most this many token states kept for rewinding to a stop string's start
DRAFT_INTERVAL_S = 1.0  # a streaming reply's text is saved (without a state) at its first text and this often


class ConversationError(RwkvError, ValueError):
    """An action that does not apply (nothing to regenerate, editing a reply, …)."""


class InputNotReadError(CancelledError):
    """Cancelled while the model was still reading a new or edited message. Nothing was saved: the
    conversation, its messages and its state are as they were before the call, and `text` is the
    message, for the caller to give back to the user."""

    def __init__(self, text: str) -> None:
        super().__init__("stopped before the model had read the message: nothing was saved")
        self.text = text


@dataclass(frozen=True)
class Reply:
    text: str
    n_tokens: int
    seconds: float
    tokens_per_second: float
    finish: str  # 'stop' | 'eot' | 'length' | 'cancelled'
    message: MessageRecord | None = None


def state_key(model: Model, family: Family) -> str:
    """What per-message states are stored under: the model's fingerprint and the family's name."""
    return f"{model.fingerprint}/{family.name}"


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 48 else line[:47].rstrip() + "…"


class Conversation:
    """One conversation, its model and its current state. Actions block; run them off the UI thread."""

    def __init__(self, store: ConversationStore, conversation_id: int, model: Model, family: Family,
                 sampling: SamplingSettings, seed: int | None) -> None:
        self.store = store
        self.id = conversation_id
        self.model = model
        self.family = family
        self.sampling = sampling
        self.tokenizer = model.tokenizer
        self.tokens_read = 0  # tokens fed through the model by this object (resume tests count them)
        self.reply_tokens = 0  # tokens generated so far by the reply in flight (or the last one); read by UIs
        self._rng = random.Random(seed)
        self.state_budget = load_settings().max_state_bytes  # bytes of saved states to keep; 0: all
        self._lock = threading.Lock()
        self._messages: list[MessageRecord] = []
        self._state: State = model.new_state()
        self._notices: list[str] = []  # for the user: damaged states set aside and rebuilt
        self._loaded: tuple[int, State] | None = None  # (message index, state) last loaded from the store
        self._replaced: tuple[State, State] | None = None  # (damaged state set aside, its rebuilt one)
        self.think = False  # thinking switch for the next user turns (thinking families)
        self.system = ""  # system prompt, fed after the family's init
        self.start_state: tuple[str, str] | None = None  # (name, file) of the state-tuned state it started from

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def start(cls, store: ConversationStore, model: Model, *, family: str, title: str | None = None,
              model_ref: str | None = None, sampling: SamplingSettings | None = None, seed: int | None = None,
              progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, think: bool = False,
              system: str = "", start_state: tuple[str, str] | None = None) -> Conversation:
        """A new conversation: the family's init prompt (and system turn) is read once and its state saved.
        `start_state`: (name, file) of a state-tuning file to start from instead of the zero state; it is
        recorded, and re-reading the transcript (another model, a damaged state) starts from it again."""
        fam = get_family(family)
        settings = sampling or fam.sampling
        conv = cls(store, 0, model, fam, settings, seed)
        conv.think, conv.system, conv.start_state = think, system.strip(), start_state
        init = fam.init_text(conv.system)
        state, _, n = conv._ingest(init, conv._first_state(), progress, cancel)
        record = store.create_conversation(
            title=title or "New conversation", mode=fam.mode, family=fam.name,
            model_ref=model_ref or str(model.path), sampling=settings.to_dict(), init_text=init,
            init_tokens=n, init_state=(state_key(model, fam), state.to_bytes()), think=think, system=conv.system,
            start_state=start_state,
        )
        conv.id = record.id
        conv._messages = store.messages(record.id)
        conv._state = state
        return conv

    @classmethod
    def resume(cls, store: ConversationStore, conversation_id: int, model: Model, *, model_ref: str | None = None,
               family: str | None = None, seed: int | None = None, progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None) -> Conversation:
        """Open a saved conversation on `model`, from its saved state when there is one for this model."""
        record = store.get_conversation(conversation_id)
        fam = get_family(family or record.family)
        settings = SamplingSettings.from_dict(record.sampling) if record.sampling else fam.sampling
        conv = cls(store, record.id, model, fam, settings, seed)
        conv.think, conv.system = record.think, record.system
        conv.start_state = (record.start_state_name, record.start_state_path) if record.start_state_path else None
        conv._messages = store.messages(record.id)
        conv._restore_or_rebuild(len(conv._messages) - 1, progress, cancel)
        if (model_ref is not None and model_ref != record.model_ref) or (family and family != record.family):
            store.update_conversation(record.id, model_ref=model_ref, family=fam.name, mode=fam.mode)
        return conv

    # --- properties --------------------------------------------------------------------------

    @property
    def record(self):
        return self.store.get_conversation(self.id)

    @property
    def title(self) -> str:
        return self.record.title

    @property
    def mode(self) -> str:
        return self.family.mode

    @property
    def messages(self) -> list[MessageRecord]:
        """The conversation's messages after the init prompt."""
        return [m for m in self._messages if m.role != "init"]

    @property
    def tokens_in_state(self) -> int:
        return sum(m.n_tokens for m in self._messages)

    @property
    def state_nbytes(self) -> int:
        return int(self._state.data.nbytes)

    @property
    def state(self) -> State:
        return self._state

    # --- actions -----------------------------------------------------------------------------

    def send(self, text: str, *, on_text: TextCallback | None = None, cancel: CancelToken | None = None,
             progress: ProgressCallback = no_progress) -> Reply:
        """Add a user message (chat) or a piece of text (novel), then generate the reply to it.
        `progress` follows the reading of the message (in tokens)."""
        with self._busy():
            if not text.strip() and self.mode == "chat":
                raise ConversationError("the message is empty")
            self._add_input(text, cancel, progress)
            if len(self.messages) == 1 and self.record.title == "New conversation":
                self.store.rename(self.id, _title_from(text))
            return self._reply(on_text, cancel)

    def regenerate(self, *, on_text: TextCallback | None = None, cancel: CancelToken | None = None) -> Reply:
        """Replace the last reply with a new one, starting from the saved state before it."""
        with self._busy():
            last = self._messages[-1]
            if last.role == "assistant":
                self._truncate_to(len(self._messages) - 2)
            elif last.role == "init":
                raise ConversationError("there is no reply to regenerate; send a message first")
            # else the reply to the last message was never saved (the program was stopped): write it now
            return self._reply(on_text, cancel)

    def edit(self, seq: int, text: str, *, on_text: TextCallback | None = None,
             cancel: CancelToken | None = None, progress: ProgressCallback = no_progress) -> Reply:
        """Replace message `seq` (a user message or novel text), drop what followed, and reply again."""
        with self._busy():
            if not 0 < seq < len(self._messages) or self._messages[seq].role not in ("user", "text"):
                raise ConversationError(f"message {seq} is not one of yours, so it cannot be edited")
            current = self._state
            self._restore_or_rebuild(seq - 1, no_progress, None)  # read from the state before message seq
            try:
                self._add_input(text, cancel, progress, replacing_from=seq)
            except InputNotReadError:
                self._state = current
                raise
            return self._reply(on_text, cancel)

    def continue_reply(self, *, on_text: TextCallback | None = None, cancel: CancelToken | None = None) -> Reply:
        """Generate more from where the text stands ("write more"; continue a cut reply)."""
        with self._busy():
            last = self._messages[-1]
            if self.mode == "chat" and last.role == "init":
                raise ConversationError("send a message first: there is no reply to continue")
            if self.mode == "chat" and last.role == "user":
                return self._reply(on_text, cancel)  # its reply was never saved (the program was stopped)
            if self.mode == "chat" and last.complete:
                raise ConversationError("the last reply is complete; send a message or regenerate it")
            return self._reply(on_text, cancel, allow_immediate_end=False)

    def undo(self) -> None:
        """Remove your last message and everything after it."""
        with self._busy():
            for m in reversed(self._messages):
                if m.role in ("user", "text"):
                    self._truncate_to(m.seq - 1)
                    return
            raise ConversationError("there is nothing to undo")

    def reset(self) -> None:
        """Back to an empty conversation (the init prompt only)."""
        with self._busy():
            self._truncate_to(0)

    def fork(self, *, through_seq: int | None = None, title: str | None = None) -> Conversation:
        """A new conversation with the same messages (through `through_seq`) and states; nothing re-read."""
        with self._busy():
            last = len(self._messages) - 1 if through_seq is None else through_seq
            if not 0 <= last < len(self._messages):
                raise ConversationError(f"no message {through_seq} to fork at")
            record = self.store.fork(self.id, through_seq=last, title=title)  # default: "… (fork)", "… (fork 2)", …
            new = Conversation(self.store, record.id, self.model, self.family, self.sampling, self._rng.getrandbits(63))
            new.think, new.system, new.start_state = self.think, self.system, self.start_state
            new._messages = self.store.messages(record.id)
            new._restore_or_rebuild(len(new._messages) - 1, no_progress, None)
            return new

    def switch_model(self, model: Model, *, model_ref: str, family: str | None = None,
                     progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> None:
        """Continue this conversation on another model (and family); its state is built once if needed."""
        with self._busy():
            fam = get_family(family) if family else self.family
            old = (self.model, self.family, self.tokenizer, self._state)
            self.model, self.family, self.tokenizer = model, fam, model.tokenizer
            try:
                self._restore_or_rebuild(len(self._messages) - 1, progress, cancel)
            except BaseException:
                self.model, self.family, self.tokenizer, self._state = old
                raise
            sampling = self.sampling if family is None else fam.sampling
            self.sampling = sampling
            self.store.update_conversation(self.id, model_ref=model_ref, family=fam.name, mode=fam.mode,
                                           sampling=sampling.to_dict())

    def set_think(self, on: bool) -> None:
        """Thinking on or off for the next messages (saved with the conversation). Messages already
        sent keep the setting they were read with."""
        self.think = bool(on)
        self.store.update_conversation(self.id, think=self.think)

    def reply_parts(self, message: MessageRecord) -> tuple[str | None, str]:
        """(thinking, answer) of a reply (thinking None when it had no think block)."""
        return self.family.split_reply(message.content, message.think)

    def reply_stream(self) -> ReplyStream:
        """A splitter of the reply being written into thinking and answer; make it from the reply's
        first `on_text` call (the turn it answers is saved by then)."""
        return ReplyStream(self.family, *self._open_turn())

    def set_sampling(self, settings: SamplingSettings) -> None:
        self.sampling = settings
        self.store.update_conversation(self.id, sampling=settings.to_dict())

    def rename(self, title: str) -> None:
        self.store.rename(self.id, title)

    # --- internals ---------------------------------------------------------------------------

    def _busy(self):
        if not self._lock.acquire(blocking=False):
            raise ConversationError("this conversation is busy with another action")
        lock = self._lock

        class _Release:
            def __enter__(self) -> None:
                return None

            def __exit__(self, *exc: object) -> None:
                lock.release()

        return _Release()

    def _feed(self, ids: Sequence[int], state: State, want_logits: bool,
              into: State | None = None) -> tuple[np.ndarray | None, State]:
        """The model fed `ids` from `state`; `into` a state no longer needed whose memory may hold the new one."""
        if self._replaced is not None and state is self._replaced[0]:
            state = self._replaced[1]  # a state set aside below, still held by a caller (a rewind's history)
        try:
            logits, state = self.model.forward(ids, state, want_logits=want_logits, into=into)
        except StateError as e:  # a loaded state passed its checks but makes the model's values non-finite
            if self._loaded is None or self._loaded[1] is not state:
                raise
            index, self._loaded = self._loaded[0], None
            self.store.set_aside_state(self._messages[index].id, self._key())
            reason = f"The saved state after message {self._messages[index].seq} was damaged ({e})"
            self._restore_or_rebuild(index, no_progress, None, [reason])
            self._replaced = (state, self._state)
            logits, state = self.model.forward(ids, self._state, want_logits=want_logits)
        self.tokens_read += len(ids)
        return logits, state

    def _ingest(self, text: str, state: State, progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None, done: int = 0, total: int | None = None,
                ) -> tuple[State, np.ndarray | None, int]:
        """Feed `text` in sequence-mode chunks; returns (state, logits of the last token, token count)."""
        ids = self.tokenizer.encode(text) if text else []
        logits = None
        if len(ids) > INGEST_CHUNK:  # a long read: its size before its first chunk
            progress(Progress("reading the conversation", done, total or len(ids), "tok"))
        for start in range(0, len(ids), INGEST_CHUNK):
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = ids[start : start + INGEST_CHUNK]
            logits, state = self._feed(chunk, state, want_logits=start + INGEST_CHUNK >= len(ids))
            progress(Progress("reading the conversation", done + start + len(chunk), total or len(ids), "tok"))
        return state, logits, len(ids)

    def _key(self) -> str:
        return state_key(self.model, self.family)

    def _fed(self, index: int) -> str:
        m = self._messages[index]
        if m.role == "init":
            return self.family.init_text(self.system)  # the current family's (a conversation may move)
        prev = self._messages[index - 1] if index > 0 else None
        prev_complete = prev is None or prev.role != "assistant" or prev.complete
        return self.family.fed_text(m.role, m.content, m.complete, prev_complete, m.think)

    def take_notices(self) -> list[str]:
        """What the user should be told since the last call (damaged saved states that were rebuilt)."""
        notices, self._notices = self._notices, []
        return notices

    def _restore_or_rebuild(self, index: int, progress: ProgressCallback, cancel: CancelToken | None,
                            damaged: list[str] | None = None) -> None:
        """Make the current state the one after message `index`: load it, or read from the nearest saved one.
        A saved state that fails its checks is set aside and read again like a missing one (`damaged`:
        reasons for states already set aside, for the notice)."""
        key = self._key()
        start, state = -1, None
        damaged = list(damaged or [])
        for i in range(index, -1, -1):
            loaded = self._load_saved_state(i, key, damaged)
            if loaded is not None:
                start, state = i, loaded
                break
        if state is None:
            state = self._first_state()
        if start == index:
            self._state = state
            self._loaded = (index, state)  # used as saved: `_feed` sets it aside if a step from it fails
            return
        texts = [self._fed(i) for i in range(start + 1, index + 1)]
        total = sum(len(self.tokenizer.encode(t)) for t in texts if t)
        done = 0
        for i, text in zip(range(start + 1, index + 1), texts, strict=True):
            state, _, n = self._ingest(text, state, progress, cancel, done, total)
            done += n
            self.store.save_state(self._messages[i].id, key, state.to_bytes())
        self._state = state
        if damaged:
            origin = f"the state after message {self._messages[start].seq}" if start >= 0 else "the start"
            self._notices.append(
                f"{'; '.join(damaged)}. Set aside; rebuilt by reading the conversation again from {origin} "
                f"({total} tokens re-read)."
            )

    def _first_state(self) -> State:
        """The state the transcript is read from: zeros, or the state-tuned state the conversation started
        from (ConversationError if its file is gone or does not fit the current model)."""
        if self.start_state is None:
            return self.model.new_state()
        from pathlib import Path

        from runtime.model.state_file import starting_state

        name, path = self.start_state
        if not Path(path).is_file():
            raise ConversationError(f"this conversation started from the state '{name}', whose file {path} is gone; "
                                    "it cannot be read again without it (put the file back)")
        try:
            return starting_state(path, self.model)
        except RwkvError as e:
            raise ConversationError(f"this conversation started from the state '{name}', which does not fit "
                                    f"{self.model.path.name}: {e}") from None

    def _load_saved_state(self, index: int, key: str, damaged: list[str]) -> State | None:
        """The saved state after message `index`, or None if there is none or it failed a check (then it
        is set aside and the reason added to `damaged`)."""
        message = self._messages[index]
        source = f"saved state after message {message.seq} of conversation {self.id}"
        try:
            blob = self.store.load_state(message.id, key)
            return None if blob is None else self.model.state_from_bytes(blob, source)
        except (StateCorruptError, StateError) as e:
            self.store.set_aside_state(message.id, key)
            damaged.append(f"The saved state after message {message.seq} was damaged ({e})")
            return None

    def _keep_within_state_budget(self) -> None:
        budget = self.state_budget
        if budget and self.store.states_disk_bytes() > budget:
            self.store.prune_states(budget)

    def _truncate_to(self, seq: int) -> None:
        self.store.truncate(self.id, seq)
        self._messages = self._messages[: seq + 1]
        self._restore_or_rebuild(seq, no_progress, None)

    def _add_input(self, text: str, cancel: CancelToken | None, progress: ProgressCallback = no_progress,
                   replacing_from: int | None = None) -> None:
        """Read the user's message (after the current state) and save it with the state after it.
        `replacing_from`: the seq it replaces (edit); that message and the later ones are dropped only
        once it has been read. Cancelled while reading: InputNotReadError, and nothing has changed."""
        self.reply_tokens = 0  # a new reply comes after this input (UIs must not show the last one's count)
        role = "user" if self.mode == "chat" else "text"
        keep = len(self._messages) if replacing_from is None else replacing_from
        prev = self._messages[keep - 1]
        prev_complete = prev.role != "assistant" or prev.complete
        think = self.think if role == "user" and self.family.thinks else None
        fed = self.family.fed_text(role, text, True, prev_complete, think)
        try:
            state, _, n = self._ingest(fed, self._state, progress, cancel)
        except CancelledError:
            raise InputNotReadError(text) from None
        stored = text.strip() if role == "user" else text
        if replacing_from is not None:
            self.store.truncate(self.id, replacing_from - 1)
            self._messages = self._messages[:replacing_from]
        msg = self.store.add_message(self.id, role=role, content=stored, n_tokens=n, complete=True,
                                     state=(self._key(), state.to_bytes()), think=think)
        self._messages.append(msg)
        self._state = state

    def _current_logits(self) -> np.ndarray:
        logits = self._state.logits
        if logits is None:
            raise ConversationError("there is no text to continue from; write something first")
        return logits

    def _reply(self, on_text: TextCallback | None, cancel: CancelToken | None,
               allow_immediate_end: bool = True) -> Reply:
        """Generate, stream and save one reply. `allow_immediate_end=False` ("write more") bans
        end-of-text as the first token, so asking for more after the model ended still writes.
        A reply stopped by an exception (Ctrl-C, an error) keeps what was shown, cut short."""
        think, prior = self._open_turn()
        draft = _Draft(self.store, self.id, self.record.model_ref, self.model.file_type,
                       self._reply_think(think, prior))
        try:
            return self._generate(on_text, cancel, allow_immediate_end, draft)
        except BaseException:
            if draft.record is not None and self._messages[-1].id != draft.record.id:
                self._keep_draft(draft)
            raise

    def _generate(self, on_text: TextCallback | None, cancel: CancelToken | None, allow_immediate_end: bool,
                  draft: _Draft) -> Reply:
        t0 = time.perf_counter()
        logits = self._current_logits()
        settings = self.sampling
        stops = tuple(s for s in (*self.family.stop, *settings.stop) if s)
        known = self.tokenizer.n_vocab  # ids past it are padding rows of the model (RWKV-7 Pile: 50304 > 50277)
        weights = _weights_for(penalty_weights(self.tokenizer), self.model.n_vocab)
        sampler = Sampler(settings, self.model.n_vocab, weights, seed=self._rng.getrandbits(63))
        decoder = self.tokenizer.stream_decoder()
        eot = self.tokenizer.eot_id
        state = self._state
        think, prior = self._open_turn()
        answer_at = self._answer_start(prior, "", think)  # where the answer begins; None: think block open
        text = ""
        emitted = 0
        n_generated = 0
        finish = "length"
        # (length of `text` before the token, decoder had no pending bytes, state before the token)
        history: deque[tuple[int, bool, State]] = deque(maxlen=_rewind_depth(stops))
        start = state  # the one state in `history` this loop did not make: never reused
        stop_at = -1
        self.reply_tokens = 0
        for _ in range(settings.max_tokens):
            if cancel is not None and cancel.cancelled:
                finish = "cancelled"
                break
            ban_end = answer_at is None or (n_generated == 0 and not allow_immediate_end)
            if ban_end or len(logits) > known:
                logits = logits.copy()
                logits[known:] = -np.inf  # padding rows are no text
                if ban_end:
                    logits[eot] = -np.inf
            token = sampler.sample(logits)
            if token == eot:
                finish = "eot"
                break
            dropped = history[0][2] if len(history) == history.maxlen else None
            history.append((len(text), not decoder.pending, state))
            into = dropped if dropped is not start else None  # its memory holds the new state
            logits, state = self._feed([token], state, want_logits=True, into=into)
            n_generated += 1
            self.reply_tokens = n_generated
            piece = decoder.feed(token)
            text += piece
            answer_at = self._answer_start(prior, text, think)
            searched = max(0, emitted - max((len(s) for s in stops), default=0))
            stop_at = -1 if answer_at is None else _find_stop(text, stops, max(searched, answer_at))
            if stop_at >= 0:
                finish = "stop"
                break
            held = (_held_back(text, (self.family.think_close,)) if answer_at is None
                    else min(len(text) - answer_at, _held_back(text, stops)))
            safe = len(text) - held
            if safe > emitted:
                draft.streamed(text, safe, n_generated)
                if on_text is not None:
                    on_text(text[emitted:safe])
            emitted = max(emitted, safe)
        if finish != "stop":
            text += decoder.flush()
        n_fed = n_generated
        if finish == "stop":
            text, state, n_fed = self._rewind(text, stop_at, history, state, n_generated)
        elif finish == "eot" and self.family.separator:
            # End of text: the reply is complete; its separator starts the next turn.
            state, _, n_sep = self._ingest(self.family.separator, state)
            n_fed += n_sep
        complete = finish in ("stop", "eot")
        if on_text is not None and len(text) > emitted:
            on_text(text[emitted:])
        message = draft.save(text, n_fed, complete, (self._key(), state.to_bytes()))
        self._messages.append(message)
        self._state = state
        self._keep_within_state_budget()
        seconds = time.perf_counter() - t0
        return Reply(text=text, n_tokens=n_generated, seconds=seconds,
                     tokens_per_second=n_generated / seconds if seconds > 0 else 0.0, finish=finish, message=message)

    def _open_turn(self) -> tuple[bool | None, str]:
        """The think setting of the turn being answered and the reply text already saved for it (a
        cut reply being continued)."""
        prior: list[str] = []
        for m in reversed(self._messages):
            if m.role != "assistant":
                return (m.think if m.role == "user" else None), "".join(reversed(prior))
            prior.append(m.content)
        return None, "".join(reversed(prior))

    def _answer_start(self, prior: str, text: str, think: bool | None) -> int | None:
        """`Family.answer_start` of the whole reply (prior parts + `text`), as an index into `text`."""
        at = self.family.answer_start(prior + text, think)
        return None if at is None else max(0, at - len(prior))

    def _reply_think(self, think: bool | None, prior: str) -> bool | None:
        """What a reply records: its turn's setting, unless it continues a reply whose answer had begun
        (then it is plain answer text)."""
        if think is None or not prior or self.family.answer_start(prior, think) is None:
            return think
        return None

    def _keep_draft(self, draft: _Draft) -> None:
        """Keep a reply an exception stopped as a cut-short reply, its state rebuilt by reading its text;
        if even that fails, the draft goes, so the messages and the state still agree."""
        record = draft.save(draft.text[: draft.shown], draft.n_tokens, False, None)
        try:
            self._messages.append(record)
            self._restore_or_rebuild(len(self._messages) - 1, no_progress, None)
        except BaseException:
            if self._messages[-1].id == record.id:
                self._messages.pop()
            with contextlib.suppress(Exception):
                self.store.truncate(self.id, len(self._messages) - 1)
            raise

    def _rewind(self, text: str, stop_at: int, history: deque[tuple[int, bool, State]], state: State,
                n_generated: int) -> tuple[str, State, int]:
        """Cut the reply at the stop string: state at the last clean token boundary, then feed the rest."""
        kept = text[:stop_at]
        n_fed = n_generated
        for offset, clean, before in reversed(history):
            n_fed -= 1
            if clean and offset <= stop_at:
                tail = kept[offset:] + self.family.separator
                state, _, n = self._ingest(tail, before) if tail else (before, None, 0)
                return kept, state, n_fed + n
        # The stop began before the remembered tokens (see _rewind_depth for when): rebuild from the
        # state before the reply.
        state, _, n = self._ingest(kept + self.family.separator, self._state)
        return kept, state, n


def _rewind_depth(stops: tuple[str, ...]) -> int:
    """Token states a reply keeps for `_rewind`: one per byte of the longest stop string (the tokens from
    the one where it starts each add a byte or more: text tokens), 3 for a character split across tokens
    just before it, 1 more; at most _REWIND_DEPTH, at least 1. Where that is not enough (a longer stop
    string, empty tokens, a run of split characters) the rewind rebuilds from the state before the
    reply: slower, the same result."""
    longest = max((len(text_to_utf8(s)) for s in stops), default=0)
    return max(1, min(_REWIND_DEPTH, longest + 4))


class _Draft:
    """A reply as streamed so far, saved without a state (at its first text, then every
    `DRAFT_INTERVAL_S`), so a kill leaves it as a cut-short reply; `save` gives it its final form."""

    def __init__(self, store: ConversationStore, conversation_id: int, model_ref: str | None,
                 file_type: str | None, think: bool | None = None) -> None:
        self.store = store
        self.conversation_id = conversation_id
        self.model_ref, self.file_type = model_ref, file_type  # the model writing it
        self.think = think  # the think setting the reply records (see Conversation._reply_think)
        self.record: MessageRecord | None = None
        self.saved_at = 0.0
        self.text = ""
        self.shown = 0  # characters of `text` streamed
        self.n_tokens = 0

    def streamed(self, text: str, shown: int, n_tokens: int) -> None:
        self.text, self.shown, self.n_tokens = text, shown, n_tokens
        now = time.monotonic()
        if self.record is None or now - self.saved_at >= DRAFT_INTERVAL_S:
            self.save(text[:shown], n_tokens, False, None)
            self.saved_at = now

    def save(self, content: str, n_tokens: int, complete: bool, state: tuple[str, bytes] | None) -> MessageRecord:
        if self.record is None:
            self.record = self.store.add_message(self.conversation_id, role="assistant", content=content,
                                                 n_tokens=n_tokens, complete=complete, state=state,
                                                 model_ref=self.model_ref, file_type=self.file_type,
                                                 think=self.think)
        else:
            self.record = self.store.update_message(self.record.id, content=content, n_tokens=n_tokens,
                                                    complete=complete, state=state)
        return self.record


def _weights_for(weights: np.ndarray, n_vocab: int) -> np.ndarray:
    """Penalty weights over the model's rows: the tokenizer's, then 0 for padding rows past it."""
    if len(weights) >= n_vocab:
        return weights
    return np.concatenate([weights, np.zeros(n_vocab - len(weights), dtype=weights.dtype)])


def _find_stop(text: str, stops: Sequence[str], start: int) -> int:
    best = -1
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold
