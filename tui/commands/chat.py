"""`rwkv-tui chat MODEL`: plain line-mode chat for the shell and for scripts.

MODEL is a file or a registry id (resolved as the app resolves `--model`); with `--resume` it defaults
to the conversation's own model. Replies stream as they are generated; tokens/s follow each reply.
Lines starting with "/" are commands (/help lists them). Errors go to stderr, never after the
speaker's name. Ctrl-C stops a reply (what was written stays, saved as cut short); at the prompt a
second Ctrl-C quits. Piped stdin is one message (`--lines`: one message or command per line).
Conversations are saved after every turn in the same database the app uses, unless `--no-save`.
A thinking model's reasoning (G1 with /think on or --think) is printed dimmed before its answer.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import RwkvError
from tui.commands.options import SEED, reply_tokens, thread_count
from tui.commands.output import console, err_console

HELP = """\
/regen                 regenerate the last reply (from the saved state before it)
/undo                  remove your last message and the reply to it
/edit [N] TEXT         replace your message N (default: your last one) and reply again
/continue              generate more (novel mode: "write more"; chat: continue a cut reply)
/reset                 start this conversation over (the init prompt only)
/history               show the conversation with message numbers
/set KEY VALUE         change a sampling setting (e.g. /set temperature 0.8); /set alone shows them
/think on|off          G1 models: reason before answering (shown dimmed), or answer at once; /think shows it
/save NAME             name this conversation (it is always saved)
/load NAME|ID          switch to a saved conversation
/save-state NAME       export the current state as a starting state for this model (chat --state NAME)
/list                  list saved conversations
/help                  this list
/quit                  leave (Ctrl-D too)
Ctrl-C stops a reply (what was written is kept, cut short); at the prompt, Ctrl-C twice quits."""


SAVED_HELP = """\
What is saved: every conversation, after every turn: your messages, the replies (a reply you stop
is kept, cut short), the sampling settings, and the model's state after each message (so resuming
reads nothing again). Where: {where}, the database the app uses
(RWKV_TUI_DATA_DIR moves it). /list shows them; --resume ID|last or the app continues them.
--no-save keeps nothing.

Piped stdin (echo "..." | rwkv-tui chat MODEL) is read as one message; --lines makes every line a
message or a /command. Ctrl-C stops a reply (what was written is kept); at the prompt, Ctrl-C twice
or Ctrl-D quits."""


class _ChatHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in where conversations are saved only when the help is shown (finding it opens no database)."""

    def add_text(self, text: str | None) -> None:
        if text == SAVED_HELP:
            from runtime.chat.store import default_path

            text = SAVED_HELP.format(where=default_path())
        super().add_text(text)


class ChatUsageError(RwkvError, ValueError):
    """Options of `rwkv-tui chat` that do not fit together."""


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chat", help="chat in plain line mode (streams replies; reads piped stdin)",
                       description="Chat in plain line mode: replies stream as they are written.",
                       epilog=SAVED_HELP, formatter_class=_ChatHelpFormatter)
    c.add_argument("model", nargs="?", default=None,
                   help="a model file (GGUF or rwkv.cpp .bin) or a registry id (`rwkv-tui models` lists them); "
                        "with --resume, the conversation's own model by default")
    c.add_argument("--family", default=None,
                   help="g1, world7, raven, world, novel or pile (default: the registry's, else from the file name)")
    c.add_argument("--seed", type=SEED, default=None, help="seed for reproducible replies")
    c.add_argument("--resume", default=None, metavar="ID", help="continue a saved conversation (id or 'last')")
    c.add_argument("--state", default=None, metavar="NAME",
                   help="start a new conversation from a state registered for MODEL with `rwkv-tui add-state`")
    c.add_argument("--threads", type=thread_count, default=None, help="threads (default: all cores)")
    c.add_argument("--max-tokens", type=reply_tokens, default=None, help="longest reply in tokens")
    thinking = c.add_mutually_exclusive_group()
    thinking.add_argument("--think", dest="think", action="store_const", const="on", default=None,
                          help="G1 models: think before answering (the reasoning is printed dimmed); a resumed "
                               "conversation keeps its own setting unless --think or --no-think is given")
    thinking.add_argument("--no-think", dest="think", action="store_const", const="off",
                          help="G1 models: answer at once (the default of a new conversation)")
    c.add_argument("--system", default=None, metavar="TEXT",
                   help="a system prompt for a new conversation (families with a System turn, e.g. G1)")
    c.add_argument("--no-save", action="store_true", help="save nothing (the conversation is gone when you leave)")
    c.add_argument("--lines", action="store_true",
                   help="piped stdin: every line is a message or a /command (default: all of it is one message)")
    c.set_defaults(func=cmd_chat)


@contextlib.contextmanager
def _ctrl_c_cancels(cancel) -> Iterator[None]:
    """While a reply is written, Ctrl-C cancels it (the reply ends and is saved cut short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: cancel.cancel())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def print_error(message: object) -> None:
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False)


def print_notices(conversation) -> None:
    """What the conversation has to tell (a damaged saved state rebuilt by reading it again)."""
    for notice in conversation.take_notices():
        err_console.print(notice, style="yellow", markup=False, highlight=False)


class LineChat:
    """The command loop, separated from argument parsing so tests can drive it."""

    def __init__(self, conversation, interactive: bool, saving: bool = True) -> None:
        self.conv = conversation
        self.interactive = interactive
        self.saving = saving

    def say(self, text: str) -> None:
        console.print(text, markup=False, highlight=False)

    def stream(self, action) -> None:
        """Run a reply action, printing the speaker once the reply's first text arrives."""
        from runtime.progress import CancelToken

        cancel = CancelToken()
        started = [False]
        speaker = "" if self.conv.mode == "novel" else "Assistant: "
        parts = []  # chat: the reply split into its thinking (printed dimmed) and its answer
        last_kind = [""]

        def begin() -> None:
            if not started[0]:
                started[0] = True
                if speaker:
                    console.print(speaker, end="", style="bold", markup=False)

        def write(kind: str, text: str) -> None:
            begin()
            if kind == "thinking":
                console.print(text, end="", style="dim", markup=False, highlight=False)
            else:
                if last_kind[0] == "thinking":
                    sys.stdout.write("\n")
                sys.stdout.write(text)
            last_kind[0] = kind
            sys.stdout.flush()

        def on_text(chunk: str) -> None:
            if self.conv.mode != "chat":
                write("answer", chunk)
                return
            if not parts:
                parts.append(self.conv.reply_stream())
            for kind, piece in parts[0].feed(chunk):
                write(kind, piece)

        try:
            with _ctrl_c_cancels(cancel):
                reply = action(on_text=on_text, cancel=cancel)
        except BaseException:
            if started[0]:
                sys.stdout.write("\n")
                sys.stdout.flush()
            raise
        begin()
        sys.stdout.write("\n")
        sys.stdout.flush()
        note = {"length": " (cut at max_tokens: /continue)",
                "cancelled": " (stopped: kept cut short; /continue or /regen)"}.get(reply.finish, "")
        err_console.print(f"[dim]{reply.n_tokens} tokens, {reply.tokens_per_second:.1f} tokens/s{note}[/dim]")

    def handle(self, line: str) -> bool:
        """Run one input line (a message or a /command); False means quit."""
        text = line.rstrip("\n")
        if text.startswith("/"):
            return self._guarded(lambda: self.command(text))
        return self.message(text)

    def message(self, text: str) -> bool:
        """Send `text` as one message (it may span lines) and stream the reply."""
        if not text.strip():
            return True
        return self._guarded(lambda: self.stream(lambda **kw: self.conv.send(text, **kw)))

    def _guarded(self, run) -> bool:
        from runtime.errors import CancelledError

        try:
            result = run()
        except CancelledError:
            err_console.print("stopped", style="dim", markup=False, highlight=False)
        except (RwkvError, ValueError) as e:
            print_error(e)
        else:
            return result is not False
        finally:
            print_notices(self.conv)
        return True

    def command(self, text: str) -> bool:
        name, _, rest = text[1:].partition(" ")
        rest = rest.strip()
        conv = self.conv
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.say(HELP)
        elif name == "regen":
            self.stream(conv.regenerate)
        elif name == "undo":
            conv.undo()
            self.say("removed your last message and its reply")
        elif name == "edit":
            seq, new_text = self._edit_target(rest)
            self.stream(lambda **kw: conv.edit(seq, new_text, **kw))
        elif name == "continue":
            self.stream(conv.continue_reply)
        elif name == "reset":
            conv.reset()
            self.say("conversation reset")
        elif name == "history":
            for m in conv.messages:
                who = {"user": "you", "assistant": "model", "text": "text"}.get(m.role, m.role)
                mark = "" if m.complete else " (incomplete)"
                thinking, answer = conv.reply_parts(m) if m.role == "assistant" else (None, m.content)
                if thinking is not None:
                    mark += f" (thought {len(thinking.split())} words)"
                self.say(f"[{m.seq}] {who}{mark}: {answer.strip()}")
        elif name == "think":
            self._think(rest)
        elif name == "set":
            self._set(rest)
        elif name == "save":
            if not self.saving:
                raise ValueError("nothing is saved in this chat (--no-save)")
            if not rest:
                raise ValueError("usage: /save NAME")
            conv.rename(rest)
            self.say(f"saved as {rest!r} (id {conv.id})")
        elif name == "save-state":
            self._save_state(rest)
        elif name == "load":
            self._load(rest)
        elif name == "list":
            self._list()
        else:
            raise ValueError(f"unknown command /{name} (/help lists them)")
        return True

    def _edit_target(self, rest: str) -> tuple[int, str]:
        first, _, remainder = rest.partition(" ")
        if first.isdigit() and remainder.strip():
            return int(first), remainder.strip()
        mine = [m for m in self.conv.messages if m.role in ("user", "text")]
        if not mine or not rest:
            raise ValueError("usage: /edit [N] TEXT (N from /history)")
        return mine[-1].seq, rest

    def _think(self, rest: str) -> None:
        conv = self.conv
        if not conv.family.thinks:
            raise ValueError(f"the {conv.family.name} family does not think; thinking is for G1 models")
        if rest not in ("", "on", "off"):
            raise ValueError("usage: /think on|off")
        if rest:
            conv.set_think(rest == "on")
        self.say("thinking is on: the model reasons before it answers" if conv.think else
                 "thinking is off: the model answers at once")

    def _set(self, rest: str) -> None:
        if not rest:
            for k, v in self.conv.sampling.to_dict().items():
                self.say(f"{k} = {v}")
            return
        key, _, value = rest.partition(" ")
        self.conv.set_sampling(self.conv.sampling.set(key, value.strip()))
        self.say(f"{key} = {self.conv.sampling.to_dict()[key]}")

    def _save_state(self, rest: str) -> None:
        from runtime.registry.states import export_state

        if not rest:
            raise ValueError("usage: /save-state NAME")
        conv = self.conv
        entry = export_state(conv.state, conv.model, conv.record.model_ref, rest)
        self.say(f"saved the conversation's state as '{entry.name}' ({entry.path}); start from it with: "
                 f"rwkv-tui chat {conv.record.model_ref} --state {entry.name}")

    def _load(self, rest: str) -> None:
        from runtime.chat.conversation import Conversation

        store = self.conv.store
        target = _find_conversation(store, rest)
        self.conv = Conversation.resume(store, target, self.conv.model, model_ref=self.conv.record.model_ref)
        self.say(f"conversation {target}: {self.conv.title} ({len(self.conv.messages)} messages)")

    def _list(self) -> None:
        for r in self.conv.store.list_conversations():
            self.say(f"{r.id:>5}  {r.title}  [{r.family}, {r.message_count} messages]")


def _find_conversation(store, ref: str) -> int:
    if not ref:
        raise ValueError("usage: /load NAME|ID")
    if ref == "last":
        last = store.last_conversation_id()
        if last is None:
            raise ValueError("there are no saved conversations")
        return last
    if ref.isdigit():
        return store.get_conversation(int(ref)).id
    matches = [r for r in store.list_conversations(include_archived=True) if r.title == ref]
    if not matches:
        raise ValueError(f"no conversation named {ref!r} (/list shows them)")
    return matches[0].id


def _model_to_open(args: argparse.Namespace, store, resume_id: int | None) -> tuple[Path, str, str | None]:
    """(file, what the conversation records, its family if known) for MODEL or the resumed conversation."""
    from runtime.registry.catalog import load_catalog
    from runtime.text.templates import read_families
    from tui.model_choice import ModelNotFoundError, choice_for, resolve_model_ref

    if args.model is None:
        if resume_id is None:
            raise ChatUsageError("name a model: a file or a registry id (`rwkv-tui models` lists them), "
                                 "or --resume a saved conversation")
        ref = store.get_conversation(resume_id).model_ref
        hint = "name the model to continue it with: rwkv-tui chat MODEL --resume ..."
        return resolve_model_ref(load_catalog(), ref, hint=hint), ref, None
    path = Path(args.model).expanduser()
    if path.is_file():
        return path, str(path.resolve()), None
    catalog = load_catalog()
    if args.model not in catalog.models and not path.exists() and (path.suffix or len(path.parts) > 1):
        raise ModelNotFoundError(f"{args.model}: no such file (and no registry id of that name)")
    choice = choice_for(catalog, read_families()[0], args.model)
    return choice.path, choice.ref, choice.family


def _open_store(no_save: bool, stack: contextlib.ExitStack):
    from runtime.chat.store import ConversationStore

    if not no_save:
        return stack.enter_context(ConversationStore.open())
    import tempfile

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rwkv-tui-chat-"))
    return stack.enter_context(ConversationStore.open(Path(folder) / "unsaved.sqlite3"))


def _prompt_loop(chat: LineChat) -> None:
    """Read lines at the prompt: Ctrl-D quits; Ctrl-C says how to quit, and quits when pressed twice."""
    armed = False
    while True:
        try:
            line = console.input("[bold]> [/bold]")
        except EOFError:
            return
        except KeyboardInterrupt:
            if armed:
                err_console.print()
                return
            armed = True
            err_console.print("\n(press Ctrl-C again or Ctrl-D to quit)", style="dim", markup=False)
            continue
        armed = False
        if not chat.handle(line):
            return


def _check_thinking(family, args: argparse.Namespace) -> None:
    """--think and --system need a family that has them."""
    if args.think is not None and not family.thinks:
        raise ChatUsageError(f"--think: the {family.name} family does not think; thinking is for G1 models")
    if args.system and not family.system:
        raise ChatUsageError(f"--system: the {family.name} family has no System turn (G1 has one)")


def _registered_state(name: str, model_ref: str, model_name: str) -> tuple[str, str]:
    """(name, file) of the state called `name` registered for the model recorded as `model_ref`."""
    from runtime.registry.states import load_states

    entries = load_states()
    for e in entries:
        if e.model == model_ref and e.name == name:
            return e.name, e.path
    others = sorted({e.model for e in entries if e.name == name})
    if others:
        raise ChatUsageError(f"--state {name}: that state is registered for {', '.join(others)}, not for "
                             f"{model_name}; states only fit the model they were tuned for")
    mine = sorted(e.name for e in entries if e.model == model_ref)
    listed = f" (its states: {', '.join(mine)})" if mine else ""
    raise ChatUsageError(f"--state {name}: no state of that name for {model_name}{listed}; "
                         f"register one with: rwkv-tui add-state FILE --model {model_ref} --name {name}")


def cmd_chat(args: argparse.Namespace) -> int:
    import runtime
    from runtime.chat.conversation import Conversation
    from runtime.text.templates import get_family, guess_family

    interactive = sys.stdin.isatty()
    if args.no_save and args.resume:
        raise ChatUsageError("--no-save and --resume do not go together: a resumed conversation is saved")
    if args.system is not None and args.resume:
        raise ChatUsageError("--system starts a new conversation; a resumed one keeps its own system prompt")
    if args.state is not None and args.resume:
        raise ChatUsageError("--state starts a new conversation; a resumed one keeps the state it started from")
    with contextlib.ExitStack() as stack:
        store = _open_store(args.no_save, stack)
        resume_id = _find_conversation(store, args.resume) if args.resume else None
        path, model_ref, family = _model_to_open(args, store, resume_id)
        start_state = _registered_state(args.state, model_ref, path.name) if args.state is not None else None
        with err_console.status("loading the model"):
            model = runtime.load_model(path, threads=args.threads)
        stack.callback(model.close)
        if resume_id is not None:
            moved = args.model is not None
            conv = Conversation.resume(store, resume_id, model, model_ref=model_ref if moved else None,
                                       family=args.family, seed=args.seed)
            _check_thinking(conv.family, args)
            if args.think is not None:
                conv.set_think(args.think == "on")
            err_console.print(f"[dim]resumed conversation {conv.id}: {conv.title} "
                              f"({len(conv.messages)} messages, {conv.tokens_read} tokens re-read)[/dim]")
            print_notices(conv)
        else:
            family = args.family or family or guess_family(model.path.name, model.tokenizer_name)
            _check_thinking(get_family(family), args)
            conv = Conversation.start(store, model, family=family, model_ref=model_ref, seed=args.seed,
                                      think=args.think == "on", system=args.system or "", start_state=start_state)
        if args.max_tokens:
            conv.set_sampling(conv.sampling.replace(max_tokens=args.max_tokens))
        chat = LineChat(conv, interactive, saving=not args.no_save)
        if interactive:
            saved = f"conversation {conv.id}" if not args.no_save else "not saved"
            err_console.print(f"[dim]{model.path.name} · {conv.family.name} · {saved} · "
                              "/help for commands, Ctrl-D to leave[/dim]")
            _prompt_loop(chat)
        elif args.lines:
            for line in sys.stdin:
                if not chat.handle(line):
                    break
        else:
            chat.message(sys.stdin.read().rstrip("\n"))
    return 0
