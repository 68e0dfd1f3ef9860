"""One conversation tab: its messages, a prompt and a status line, with its own model, mode and sampling.

Everything that touches the model runs in a thread worker (`_spawn`); the worker reports back with
the messages in `tui.messages`. Reply text streams through a `StreamBuffer` that a timer drains 10
times a second into the message view, so the UI thread never waits for the model and never gets a
call per token: each screen update costs the UI thread a few ms whatever changed (Textual renders
every widget overlapping the update), and on a 2-core machine that time is taken from the model's
threads. Only one blocking action runs per pane at a time (the runtime's `Conversation`
refuses concurrent actions too); Esc cancels it and keeps what was written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.widgets import ProgressBar, TabbedContent, TabPane

from runtime.progress import CancelToken, Progress
from tui.messages import (
    ConversationChanged,
    ConversationsChanged,
    Forked,
    PaneDone,
    PaneFailed,
    PaneLoaded,
    ReplyFailed,
    ReplyFinished,
    WorkProgress,
)
from tui.widgets.conversation import ConversationView, MessageView, Shown, StreamBuffer
from tui.widgets.prompt import PromptArea
from tui.widgets.sidebar import model_label
from tui.widgets.status import PaneStatus, StatusLine

FLUSH_HZ = 10  # ~2-3 tokens an update at 25 tokens/s
STATUS_HZ = 4
PLACEHOLDER = {
    "chat": "Message · enter sends · ctrl+j new line · ctrl+o $EDITOR",
    "novel": "Your text · enter sends, the model continues it · ctrl+g writes more",
}


def model_name(path: str | Path | None) -> str:
    if not path:
        return ""
    name = Path(path).name
    for suffix in (".gguf", ".bin"):
        name = name.removesuffix(suffix)
    return name


def file_type(model: Any) -> str:
    """The type of the model's layer matrices (Q5_1, F16, …)."""
    try:
        return model.file_type
    except (AttributeError, IndexError):
        return ""


def _tab_label(title: str) -> str:
    return title if len(title) <= 24 else title[:23] + "…"


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 600 else text[:600] + "…"


class ChatPane(TabPane):
    """A tab holding one conversation (saved, or new until its first message)."""

    def __init__(self, pane_id: str, *, title: str, family: str, mode: str,
                 conversation_id: int | None = None, model_path: str | Path | None = None,
                 model_ref: str | None = None, conversation: Any | None = None, model: Any | None = None,
                 select_seq: int | None = None, start_state: tuple[str, str] | None = None) -> None:
        super().__init__(_tab_label(title), id=pane_id)
        self.tab_title = title
        self.conversation_id = conversation_id
        self.conversation = conversation
        self.model = model if conversation is None else conversation.model
        self.model_path = Path(model_path) if model_path else (Path(self.model.path) if self.model else None)
        self.model_ref = model_ref
        self.family_name = family
        self.mode = mode
        self.pending_sampling: Any | None = None  # sampling chosen before the first message
        self.think = False  # thinking switch (thinking families), saved with the conversation
        self.pending_system = ""  # system prompt chosen before the first message
        self.pending_start_state = start_state  # (name, file) of the registered state a new chat starts from
        self._busy = ""  # "", "loading", "generating", "working", …
        self.cancel: CancelToken | None = None
        self.stream = StreamBuffer()
        self.select_seq = select_seq
        self.last_rate = 0.0
        self.replies = 0  # replies finished in this tab (ended, stopped or failed)
        self.last_finish = ""
        self.problem = ""  # why there is no model, shown in the status line
        self._streaming: MessageView | None = None
        self._doing = ""  # what the reply in flight answers: "sending", "editing", …
        self._status_shown = 0.0  # when the status line was last refreshed by the flush timer
        self._tab_closed = False
        self._jobs_running = 0
        self._run_lock = threading.Lock()
        self._held: list[Any] = [self.model] if self.model is not None else []  # pool references we own

    @property
    def busy(self) -> str:
        """What blocking work runs now ("" when idle)."""
        return self._busy

    @busy.setter
    def busy(self, value: str) -> None:
        self._busy = value
        if self.is_attached:
            self.screen.refresh_bindings()  # the footer shows "esc Stop" only while something runs

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield ConversationView(self.mode, model_name(self.model_path) or "Model", id="view")
        yield ProgressBar(id="work-progress", show_eta=True, classes="-hidden")
        yield PromptArea(PLACEHOLDER.get(self.mode, ""), id="prompt")
        yield StatusLine(id="status")

    @property
    def view(self) -> ConversationView:
        return self.query_one("#view", ConversationView)

    @property
    def prompt(self) -> PromptArea:
        return self.query_one("#prompt", PromptArea)

    @property
    def store(self) -> Any:
        return self.app.store  # type: ignore[attr-defined]

    @property
    def pool(self) -> Any:
        return self.app.pool  # type: ignore[attr-defined]

    async def on_mount(self) -> None:
        self.set_interval(1 / FLUSH_HZ, self._flush)
        if self.conversation is not None:  # a fork, already open
            self.conversation_id = self.conversation.id
            await self._show_conversation()
            self._loaded_status()
            return
        if self.conversation_id is not None:
            await self._show_saved_transcript()
            self._resume()
        elif self.model is None and self.model_path is not None:
            self._load_model()
        self.refresh_status()

    def set_title(self, title: str) -> None:
        self.tab_title = title
        with suppress(NoMatches):
            self.query_ancestor(TabbedContent).get_tab(self).label = _tab_label(title)

    # --- workers -----------------------------------------------------------------------------

    def _spawn(self, busy: str, job: Callable[[CancelToken], None], on_error: Callable[[BaseException], Any]) -> bool:
        """Run `job(cancel)` in a thread; False (and a notice) if the pane is busy already."""
        if self.busy:
            self.app.notify(f"This tab is {self.busy}; wait, or press esc to stop it.", severity="warning")
            return False
        self.busy = busy
        cancel = self.cancel = CancelToken()

        def run() -> None:
            with self._run_lock:
                self._jobs_running += 1
            try:
                job(cancel)
            except BaseException as e:
                self.post_message(on_error(e))
            finally:
                with self._run_lock:
                    self._jobs_running -= 1
                    release = self._tab_closed and self._jobs_running == 0
                if release:
                    self._release_all()

        self.run_worker(run, thread=True, group="pane", exit_on_error=False, name=busy)
        self.refresh_status()
        return True

    def _progress(self) -> Callable[[Progress], None]:
        """A progress callback for workers that posts at most 10 updates a second."""
        last = [0.0]

        def report(event: Progress) -> None:
            now = time.monotonic()
            if event.done >= event.total or now - last[0] >= 0.1:
                last[0] = now
                self.post_message(WorkProgress(event))

        return report

    def _acquire(self, path: str | Path) -> Any:
        """Load (or share) the model of `path` for this tab; released when the tab closes."""
        model = self.pool.acquire(path)
        with self._run_lock:
            self._held.append(model)
        return model

    def _release(self, model: Any) -> None:
        with self._run_lock:
            if model not in self._held:
                return
            self._held.remove(model)
        self.pool.release(model)

    def _release_all(self) -> None:
        with self._run_lock:
            held, self._held = self._held, []
        for model in held:
            self.pool.release(model)

    def _load_model(self) -> None:
        path = self.model_path

        def job(cancel: CancelToken) -> None:
            model = self._acquire(path)
            self.post_message(PaneLoaded(model, None, self._check_start_state(model)))

        self._spawn("loading", job, lambda e: PaneFailed(e, f"loading {model_name(path)}"))

    def _check_start_state(self, model: Any) -> str:
        """Whether the state this new chat is to start from fits `model` (in the loading worker): "" if it
        does or there is none, else why not; the chat then starts from no state."""
        chosen = self.pending_start_state
        if chosen is None:
            return ""
        from runtime.model.state_file import starting_state

        name, path = chosen
        try:
            starting_state(path, model)
        except Exception as e:
            self.pending_start_state = None
            return f"The state '{name}' cannot be used with {model_name(model.path)}: {describe_error(e)}"
        return ""

    def _resume(self) -> None:
        conversation_id = self.conversation_id

        def job(cancel: CancelToken) -> None:
            from runtime.chat.conversation import Conversation

            record = self.store.get_conversation(conversation_id)
            path = self.app.resolve_model_ref(record.model_ref)  # type: ignore[attr-defined]
            model = self._acquire(path)
            try:
                conv = Conversation.resume(self.store, conversation_id, model, model_ref=record.model_ref,
                                           progress=self._progress(), cancel=cancel)
            except BaseException:
                self._release(model)
                raise
            self.post_message(PaneLoaded(model, conv))

        self._spawn("loading", job, lambda e: PaneFailed(e, "opening the conversation"))

    # --- what the worker reports ----------------------------------------------------------------

    async def on_pane_loaded(self, message: PaneLoaded) -> None:
        message.stop()
        self.busy = ""
        self._hide_progress()
        if self._tab_closed:
            return
        self.model = message.model
        self.model_path = Path(message.model.path)
        self.problem = ""
        if message.conversation is not None:
            self.conversation = message.conversation
            self.conversation_id = message.conversation.id
            await self._show_conversation()
        else:
            self.view.set_mode(self.mode, model_name(self.model_path))
        if message.notice:
            self.app.notify(f"{message.notice}. This chat starts from no state.", title="Starting state",
                            severity="error", timeout=15)
        self._loaded_status()

    def _loaded_status(self) -> None:
        self.refresh_status()
        if self.app.focused is None:
            self.screen.focus_active_prompt()  # type: ignore[attr-defined]

    def on_pane_failed(self, message: PaneFailed) -> None:
        message.stop()
        self.busy = ""
        self._hide_progress()
        if self._tab_closed:
            return
        cancelled = type(message.error).__name__ == "CancelledError"
        if cancelled:
            self.problem = "stopped"
        else:
            self.problem = f"{message.doing} failed"
            self.app.notify(describe_error(message.error), title=f"Error {message.doing}", severity="error",
                            timeout=12)
        self.refresh_status()

    def on_work_progress(self, message: WorkProgress) -> None:
        message.stop()
        bar = self.query_one("#work-progress", ProgressBar)
        bar.remove_class("-hidden")
        bar.update(total=max(1, message.event.total), progress=message.event.done)
        self.refresh_status(activity=f"{message.event.what} {message.event.done:,}/{message.event.total:,}")

    def _hide_progress(self) -> None:
        self.query_one("#work-progress", ProgressBar).add_class("-hidden")

    # --- showing messages --------------------------------------------------------------------

    async def _show_saved_transcript(self) -> None:
        """Before the model is ready: the saved messages straight from the store."""
        try:
            record = self.store.get_conversation(self.conversation_id)
            messages = self.store.messages(self.conversation_id)
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot open the conversation", severity="error")
            return
        self.mode = record.mode
        self.family_name = record.family
        self.model_ref = record.model_ref
        self.think = record.think
        self.view.set_mode(record.mode, model_name(record.model_ref))
        self.prompt.placeholder = PLACEHOLDER.get(self.mode, "")
        await self.view.set_messages([Shown.of(m) for m in messages if m.role != "init"])
        self._after_show()

    async def _show_conversation(self) -> None:
        conv = self.conversation
        self.mode = conv.mode
        self.family_name = conv.family.name
        self.think = conv.think
        self.view.set_mode(conv.mode, model_name(conv.model.path))
        self.prompt.placeholder = PLACEHOLDER.get(self.mode, "")
        await self.view.set_messages([Shown.of(m) for m in conv.messages])
        self.set_title(conv.title)
        self._after_show()
        self._tell_notices()

    def _tell_notices(self) -> None:
        """Show what the conversation has to tell (a damaged saved state rebuilt by reading it again)."""
        if self.conversation is not None:
            for notice in self.conversation.take_notices():
                self.app.notify(notice, title="A saved state was damaged", severity="warning", timeout=15)

    def _after_show(self) -> None:
        if self.select_seq is not None:
            self.view.select_seq(self.select_seq)
            self.select_seq = None
        else:
            self.view.scroll_end(animate=False)

    async def _flush(self) -> None:
        """Move streamed text into the view (timer, FLUSH_HZ times a second); the status's live rate
        STATUS_HZ times a second."""
        text = self.stream.drain()
        if text and self._streaming is not None:
            await self._streaming.append(text)
        now = time.monotonic()
        if self.busy == "generating" and now - self._status_shown >= 1 / STATUS_HZ:
            self._status_shown = now
            self.refresh_status()

    def refresh_status(self, activity: str | None = None) -> None:
        if not self.is_mounted:
            return
        conv = self.conversation
        status = PaneStatus(
            model=model_name(self.model_path or self.model_ref),
            file_type=file_type(self.model) if self.model is not None else "",
            family=self.family_name,
            mode=self.mode,
            think=self.turn_think if self.model is not None or self.conversation is not None else None,
        )
        if self.busy == "generating" and self.stream.reading:
            status.activity, status.live = "reading…", True
            status.read_done, status.read_total = self.stream.read_done, self.stream.read_total
            status.rate = self.stream.read_rate()
        elif self.busy == "generating":
            tokens = conv.reply_tokens if conv is not None else None
            status.activity, status.rate, status.live = "writing", self.stream.rate(tokens), True
        elif self.busy:
            status.activity = activity or f"{self.busy}…"
        elif self.problem:
            status.activity = self.problem
        elif self.model is None:
            status.activity = "no model: F4 picks one"
        else:
            status.rate = self.last_rate
            status.activity = {"cancelled": "stopped", "length": "max tokens reached"}.get(
                self.last_finish, "")
        if conv is not None:
            status.tokens = conv.tokens_in_state
            status.state_bytes = conv.state_nbytes
            status.start_state = conv.start_state[0] if conv.start_state else ""
        elif self.pending_start_state is not None:
            status.start_state = self.pending_start_state[0]
        self.query_one(StatusLine).show(status)

    # --- thinking ----------------------------------------------------------------------------

    @property
    def thinks(self) -> bool:
        """Whether this tab's family is a thinking one (G1)."""
        family = self.app.families.get(self.family_name)  # type: ignore[attr-defined]
        return family is not None and family.thinks

    @property
    def turn_think(self) -> bool | None:
        """How the next user turn's prompt ends: thinking on/off, or None (no think markup)."""
        return self.think if self.thinks and self.mode == "chat" else None

    @property
    def has_system_turn(self) -> bool:
        family = self.app.families.get(self.family_name)  # type: ignore[attr-defined]
        return family is not None and bool(family.system) and self.mode == "chat"

    @property
    def system_prompt(self) -> str:
        return self.conversation.system if self.conversation is not None else self.pending_system

    def system_prompt_blocked(self) -> str | None:
        """Why this tab cannot take a system prompt now (None: it can)."""
        if not self.has_system_turn:
            return f"The {self.family_name} family has no System turn (G1 has one)."
        if self.conversation is not None:
            return "A system prompt is read before the first message: open a new chat (ctrl+n) to set one."
        return None

    def set_system_prompt(self, text: str) -> bool:
        """The system prompt of a chat not started yet (read before the first message); False, with a
        notice, when the tab cannot take one."""
        reason = self.system_prompt_blocked()
        if reason is not None:
            self.app.notify(reason, severity="warning")
            return False
        self.pending_system = text.strip()
        return True

    def toggle_think(self) -> None:
        """Thinking on/off for the next messages of this tab (saved with the conversation)."""
        if not self.thinks:
            self.app.notify(f"The {self.family_name} family does not think; thinking is for G1 models.",
                            severity="warning")
            return
        self.think = not self.think
        if self.conversation is not None:
            self.conversation.set_think(self.think)
        self.app.notify("Thinking on: the model reasons before it answers (slower)." if self.think else
                        "Thinking off: the model answers at once.", title="Thinking")
        self.refresh_status()

    # --- replies -----------------------------------------------------------------------------

    def can(self, action: str) -> bool:
        """Whether regenerate / continue_reply has something to act on now (else their keys give a notice)."""
        if self.conversation is None or not self.is_mounted:
            return False
        views = self.view.views
        last = views[-1].shown if views else None
        if action == "regenerate":  # a reply, or a message whose reply was never saved (the app was stopped)
            return last is not None and last.role in ("assistant", "user", "text")
        if action == "continue_reply":
            return self.mode == "novel" or (last is not None and (last.role == "user" or (
                last.role == "assistant" and not last.complete)))
        return True

    def _busy_notice(self) -> bool:
        """True (and a notice) while a reply is being written."""
        if self.busy:
            self.app.notify("A reply is being written: press esc to stop it first.", severity="warning")
        return bool(self.busy)

    def _can_generate(self) -> bool:
        if self.model is None:
            self.app.notify("This tab has no model yet: press F4 to choose one, or F2 to get one.",
                            severity="warning")
            return False
        return True

    def _start_reply(self, streaming: MessageView, call: Callable[[Any, Callable[[str], None], CancelToken], Any],
                     doing: str) -> bool:
        self._doing = doing
        self.stream.reset(reading=doing in ("sending", "editing"))  # these read the user's text first
        self._streaming = streaming
        self.view.follow()
        family = self.family_name
        model_ref = self.model_ref
        sampling = self.pending_sampling
        think = self.think
        system = self.pending_system
        start_state = self.pending_start_state

        def job(cancel: CancelToken) -> None:
            from runtime.chat.conversation import Conversation

            conv = self.conversation
            if conv is None:
                conv = Conversation.start(self.store, self.model, family=family, model_ref=model_ref,
                                          sampling=sampling, think=think, system=system, start_state=start_state)
                self.post_message(ConversationChanged(conv, "started"))
            reply = call(conv, self.stream.push, cancel)
            self.post_message(ReplyFinished(reply, conv))

        started = self._spawn("generating", job, lambda e: ReplyFailed(e))
        if not started:
            self._streaming = None
        return started

    def _new_reply(self, think: bool | None = None) -> Shown:
        """The reply about to stream, labelled with the model that writes it; `think`: how the prompt
        of the turn it answers ended (its reasoning is shown apart)."""
        name = model_label(self.model_ref) if self.model_ref else model_name(self.model_path)
        return Shown("assistant", "", complete=False, model=name, file_type=file_type(self.model), think=think)

    def _answered_think(self) -> bool | None:
        """The think setting of the last message of yours (the turn a regenerated reply answers)."""
        return next((v.shown.think for v in reversed(self.view.views) if v.shown.role == "user"), None)

    async def send(self, text: str) -> None:
        if not self._can_generate() or self.busy:
            if self.busy:
                self.app.notify("A reply is being written: press esc to stop it first.", severity="warning")
            return
        role = "user" if self.mode == "chat" else "text"
        think = self.turn_think
        await self.view.add(Shown(role, text, complete=True, think=think))
        streaming = await self.view.add(self._new_reply(think))
        if self._start_reply(streaming, lambda conv, on_text, cancel: conv.send(text, on_text=on_text, cancel=cancel,
                                                                         progress=self.stream.read),
                             "sending"):
            self.prompt.clear()

    async def regenerate(self) -> None:
        views = self.view.views
        if self.conversation is None or not self.can("regenerate"):
            self.app.notify("There is no reply to regenerate: send a message first.", severity="warning")
            return
        if not self._can_generate() or self._busy_notice():
            return
        last = views[-1]
        if last.shown.role == "assistant":
            await last.set_content("")
            last.shown = self._new_reply(self._answered_think())
            last.speaker = self.view.speaker(last.shown)
            last.refresh_header()
        else:  # the reply to the last message was never saved: write it now
            last = await self.view.add(self._new_reply(self._answered_think()))
        self._start_reply(last, lambda conv, on_text, cancel: conv.regenerate(on_text=on_text, cancel=cancel),
                          "regenerating")

    async def edit(self, seq: int, text: str) -> None:
        if self.conversation is None or not self._can_generate() or self.busy:
            return
        views = self.view.views
        index = next((i for i, v in enumerate(views) if v.shown.seq == seq), None)
        if index is None:
            return
        await self.view.truncate(index + 1)
        await views[index].set_content(text)
        views[index].shown.think = self.turn_think
        streaming = await self.view.add(self._new_reply(self.turn_think))
        self._start_reply(streaming, lambda conv, on_text, cancel: conv.edit(
            seq, text, on_text=on_text, cancel=cancel, progress=self.stream.read), "editing")

    async def continue_reply(self) -> None:
        if self.conversation is None:
            self.app.notify("There is nothing to continue yet: write something first.", severity="warning")
            return
        if not self._can_generate() or self._busy_notice():
            return
        views = self.view.views
        if self.mode == "chat":
            if not self.can("continue_reply"):
                self.app.notify("Continue works on a reply that was stopped or cut; send a message or "
                                "regenerate instead.", severity="warning")
                return
            if views[-1].shown.role == "assistant":
                streaming = views[-1]
            else:  # the reply to the last message was never saved: write it now
                streaming = await self.view.add(self._new_reply())
        else:
            streaming = await self.view.add(self._new_reply())
        self._start_reply(streaming, lambda conv, on_text, cancel: conv.continue_reply(on_text=on_text,
                                                                                      cancel=cancel), "continuing")

    def stop(self) -> bool:
        """Cancel the running action (the partial reply stays); False if nothing is running."""
        if not self.busy or self.cancel is None:
            return False
        self.cancel.cancel()
        self.refresh_status(activity="stopping…")
        return True

    async def _end_reply(self, message: ReplyFinished | ReplyFailed) -> bool:
        """Flush and leave the streaming state; False when the tab has been closed meanwhile."""
        message.stop()
        await self._flush()
        self.busy = ""
        self._streaming = None
        self.replies += 1
        return not self._tab_closed

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        if not await self._end_reply(message):
            return
        self.conversation = message.conversation
        self.conversation_id = message.conversation.id
        reply = message.reply
        self.last_rate = reply.tokens_per_second
        self.last_finish = reply.finish
        self._tell_notices()
        await self.view.set_messages([Shown.of(m) for m in self.conversation.messages])
        self.set_title(self.conversation.title)
        self.refresh_status()
        self.screen.refresh_bindings()
        self.post_message(ConversationsChanged())

    async def on_reply_failed(self, message: ReplyFailed) -> None:
        if not await self._end_reply(message):
            return
        from runtime.chat.conversation import InputNotReadError

        if isinstance(message.error, InputNotReadError):
            self._give_back(message.error.text)
        else:
            self.app.notify(describe_error(message.error), title="The reply failed", severity="error", timeout=12)
        if self.conversation is not None:
            await self.view.set_messages([Shown.of(m) for m in self.conversation.messages])
        else:
            views = self.view.views
            if views and views[-1].shown.seq is None and views[-1].shown.role == "assistant":
                await self.view.truncate(len(views) - 1)
        self.refresh_status()

    def _give_back(self, text: str) -> None:
        """Stopped before the model had read the message: nothing was saved, so it goes back into the
        prompt (before anything typed meanwhile), and a notice says so."""
        typed = self.prompt.text
        self.prompt.text = text + ("\n\n" + typed if typed.strip() else "")
        self.prompt.move_cursor((len(text.split("\n")) - 1, len(text.split("\n")[-1])))
        what = "your edited message" if self._doing == "editing" else "your message"
        self.app.notify(f"Stopped before the model had read {what}, so nothing was saved: it is back in the "
                        "input box.", title="Stopped", timeout=10)
        self.last_finish = "cancelled"

    async def on_conversation_changed(self, message: ConversationChanged) -> None:
        message.stop()
        if message.note != "started":
            self.busy = ""
            self._hide_progress()
        if self._tab_closed:
            return
        self.conversation = message.conversation
        self.conversation_id = message.conversation.id
        if message.note == "started":
            self.set_title(self.conversation.title)
            self.post_message(ConversationsChanged())
            return
        self.model = self.conversation.model
        self.model_path = Path(self.model.path)
        self.problem = ""
        await self._show_conversation()
        self.refresh_status()
        if message.note:
            self.app.notify(message.note)
        self.post_message(ConversationsChanged())

    # --- other actions -----------------------------------------------------------------------

    def _simple(self, doing: str, action: Callable[[Any], Any], note: str = "") -> None:
        conv = self.conversation
        if conv is None:
            self.app.notify("There is nothing to do yet: send a message first.", severity="warning")
            return

        def job(cancel: CancelToken) -> None:
            action(conv)
            self.post_message(ConversationChanged(conv, note))

        self._spawn("working", job, lambda e: PaneFailed(e, doing))

    def undo(self) -> None:
        self._simple("undoing", lambda c: c.undo(), "Removed your last message and its reply.")

    def reset(self) -> None:
        self._simple("resetting", lambda c: c.reset(), "The conversation is empty again.")

    def fork(self, through_seq: int | None = None) -> None:
        conv = self.conversation
        if conv is None:
            self.app.notify("There is nothing to fork yet.", severity="warning")
            return

        def job(cancel: CancelToken) -> None:
            new = conv.fork(through_seq=through_seq)
            self.pool.acquire(new.model.path)  # the new tab's own reference (it releases it when closed)
            self.post_message(Forked(new))

        self._spawn("forking", job, lambda e: PaneFailed(e, "forking"))

    def save_state(self, name: str) -> None:
        """Export the conversation's current state as a state-tuning `.pth` and register it for its model
        as `name` (what /save-state does in line mode); a notice names the file written."""
        conv = self.conversation
        if conv is None:
            self.app.notify("There is no state to save yet: send a message first (a system prompt is read "
                            "with it).", severity="warning")
            return

        def job(cancel: CancelToken) -> None:
            from runtime.registry.states import export_state

            model_ref = conv.record.model_ref
            entry = export_state(conv.state, conv.model, model_ref, name)
            self.post_message(PaneDone(f"Saved this conversation's state as '{entry.name}' to {entry.path}. New "
                                       f"chats on {model_label(model_ref)} can start from it.", "State saved"))

        self._spawn("saving the state", job,
                    lambda e: PaneDone(describe_error(e), "Cannot save the state", severity="error"))

    def on_pane_done(self, message: PaneDone) -> None:
        message.stop()
        self.busy = ""
        self.app.notify(message.note, title=message.title, severity=message.severity, timeout=15)
        self.refresh_status()

    def on_forked(self, message: Forked) -> None:
        self.busy = ""
        self.refresh_status()  # let the message bubble to the screen, which opens the tab

    def switch_model(self, path: Path, model_ref: str, family: str) -> None:
        """Continue this conversation on another model (its state is built once, with progress)."""
        if self.busy:
            self.app.notify(f"This tab is {self.busy}; wait, or press esc to stop it.", severity="warning")
            return
        conv = self.conversation
        conversation_id = self.conversation_id
        old = self.model
        self.model_ref = model_ref
        if conv is None and conversation_id is None:  # nothing said yet: just another model
            from runtime.text.templates import get_family

            if old is not None:
                self._release(old)
            self.model, self.model_path = None, Path(path)
            self.family_name, self.mode = family, get_family(family, self.app.families).mode  # type: ignore
            self.view.set_mode(self.mode, model_name(path))
            self.prompt.placeholder = PLACEHOLDER.get(self.mode, "")
            self.set_title("New chat" if self.mode == "chat" else "New novel")
            self._load_model()
            return

        def job(cancel: CancelToken) -> None:
            from runtime.chat.conversation import Conversation

            model = self._acquire(path)
            try:
                if conv is not None:
                    conv.switch_model(model, model_ref=model_ref, family=family, progress=self._progress(),
                                      cancel=cancel)
                    new = conv
                else:
                    new = Conversation.resume(self.store, conversation_id, model, model_ref=model_ref, family=family,
                                              progress=self._progress(), cancel=cancel)
            except BaseException:
                self._release(model)
                raise
            if old is not None:
                self._release(old)  # the same file stays loaded: `model` holds its own reference
            self.post_message(ConversationChanged(new, f"Now on {model_name(path)} ({family})."))

        self._spawn("switching model", job, lambda e: PaneFailed(e, f"switching to {model_name(path)}"))

    def set_sampling(self, settings: Any) -> None:
        if self.conversation is None:
            self.pending_sampling = settings
        else:
            self.conversation.set_sampling(settings)

    def sampling(self) -> Any:
        if self.conversation is not None:
            return self.conversation.sampling
        if self.pending_sampling is not None:
            return self.pending_sampling
        families = self.app.families  # type: ignore[attr-defined]
        family = families.get(self.family_name)
        return family.sampling if family is not None else None

    # --- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop any work; the model is released now or when the running worker ends."""
        if self.cancel is not None:
            self.cancel.cancel()
        with self._run_lock:
            self._tab_closed = True
            release = self._jobs_running == 0
        if release:
            self._release_all()
