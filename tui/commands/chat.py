"""`rwkv-tui chat MODEL`: plain line-mode chat for the shell and for scripts.

Replies stream as they are generated; tokens/s follow each reply. Lines starting with "/" are
commands (/help lists them). With stdin piped, every line is one message and no prompt is shown.
Conversations are saved after every turn in the same database the app uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
/save NAME             name this conversation (it is always saved)
/load NAME|ID          switch to a saved conversation
/list                  list saved conversations
/help                  this list
/quit                  leave (Ctrl-D too)"""


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chat", help="chat in plain line mode (streams replies; reads piped stdin)")
    c.add_argument("model", type=Path, help="a GGUF or rwkv.cpp .bin model file")
    c.add_argument("--family", default=None, help="raven, world, novel or pile (default: from the file name)")
    c.add_argument("--seed", type=SEED, default=None, help="seed for reproducible replies")
    c.add_argument("--resume", default=None, metavar="ID", help="continue a saved conversation (id or 'last')")
    c.add_argument("--threads", type=thread_count, default=None, help="threads (default: all cores)")
    c.add_argument("--max-tokens", type=reply_tokens, default=None, help="longest reply in tokens")
    c.set_defaults(func=cmd_chat)


class LineChat:
    """The command loop, separated from argument parsing so tests can drive it."""

    def __init__(self, conversation, interactive: bool) -> None:
        self.conv = conversation
        self.interactive = interactive

    def say(self, text: str) -> None:
        console.print(text, markup=False, highlight=False)

    def stream(self, action) -> None:
        from runtime.progress import CancelToken

        cancel = CancelToken()
        first = [True]
        speaker = "" if self.conv.mode == "novel" else "Assistant: "
        if speaker:
            console.print(speaker, end="", style="bold", markup=False)

        def on_text(chunk: str) -> None:
            if first[0] and self.conv.mode == "chat":
                chunk = chunk.lstrip()
                if not chunk:
                    return
            first[0] = False
            sys.stdout.write(chunk)
            sys.stdout.flush()

        try:
            reply = action(on_text=on_text, cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
        sys.stdout.write("\n")
        note = {"length": " (cut at max_tokens: /continue)", "cancelled": " (stopped)"}.get(reply.finish, "")
        err_console.print(f"[dim]{reply.n_tokens} tokens, {reply.tokens_per_second:.1f} tokens/s{note}[/dim]")

    def handle(self, line: str) -> bool:
        """Run one input line; False means quit."""
        from runtime.chat.conversation import ConversationError

        text = line.rstrip("\n")
        if not text.strip():
            return True
        try:
            if text.startswith("/"):
                return self.command(text)
            self.stream(lambda **kw: self.conv.send(text, **kw))
        except (ConversationError, ValueError) as e:
            err_console.print(f"[red]{e}[/red]")
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
                self.say(f"[{m.seq}] {who}{mark}: {m.content.strip()}")
        elif name == "set":
            self._set(rest)
        elif name == "save":
            if not rest:
                raise ValueError("usage: /save NAME")
            conv.rename(rest)
            self.say(f"saved as {rest!r} (id {conv.id})")
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

    def _set(self, rest: str) -> None:
        if not rest:
            for k, v in self.conv.sampling.to_dict().items():
                self.say(f"{k} = {v}")
            return
        key, _, value = rest.partition(" ")
        self.conv.set_sampling(self.conv.sampling.set(key, value.strip()))
        self.say(f"{key} = {self.conv.sampling.to_dict()[key]}")

    def _load(self, rest: str) -> None:
        from runtime.chat.conversation import Conversation

        store = self.conv.store
        target = _find_conversation(store, rest)
        self.conv = Conversation.resume(store, target, self.conv.model, model_ref=str(self.conv.model.path))
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


def cmd_chat(args: argparse.Namespace) -> int:
    import runtime
    from runtime.chat.conversation import Conversation
    from runtime.chat.store import ConversationStore
    from runtime.text.templates import guess_family

    interactive = sys.stdin.isatty()
    with err_console.status("loading the model"):
        model = runtime.load_model(args.model, threads=args.threads)
    store = ConversationStore.open()
    try:
        if args.resume:
            conv = Conversation.resume(store, _find_conversation(store, args.resume), model,
                                       model_ref=str(Path(args.model).resolve()), family=args.family, seed=args.seed)
            err_console.print(f"[dim]resumed conversation {conv.id}: {conv.title} "
                              f"({len(conv.messages)} messages, {conv.tokens_read} tokens re-read)[/dim]")
        else:
            family = args.family or guess_family(model.path.name, model.tokenizer_name)
            conv = Conversation.start(store, model, family=family, model_ref=str(Path(args.model).resolve()),
                                      seed=args.seed)
        if args.max_tokens:
            conv.set_sampling(conv.sampling.replace(max_tokens=args.max_tokens))
        chat = LineChat(conv, interactive)
        if interactive:
            err_console.print(f"[dim]{model.path.name} · {conv.family.name} · conversation {conv.id} · "
                              "/help for commands, Ctrl-D to leave[/dim]")
        while True:
            if interactive:
                try:
                    line = console.input("[bold]> [/bold]")
                except EOFError:
                    break
            else:
                line = sys.stdin.readline()
                if not line:
                    break
            if not chat.handle(line):
                break
    finally:
        store.close()
        model.close()
    return 0
