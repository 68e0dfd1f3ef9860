"""The full-screen Textual app: conversation tabs, the model registry, jobs, settings and help.

`run_app(model=..., resume=...)` is what `rwkv-tui` (no subcommand) calls. The app is a front end
over the runtime: conversations (`runtime.chat`), the registry and its jobs (`runtime.registry`). It
owns the shared resources of the session: the conversation store, the pool of loaded models (one per
file, shared by tabs), the model families, and the user's keymap.

It starts without any model: a first run shows the welcome screen and the registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from runtime.errors import RwkvError
from tui.keymap import KEYS, bindings, key_label, load_keymap
from tui.messages import JobsChanged
from tui.model_choice import (
    ModelChoice,
    ModelNotFoundError,
    choice_for,
    continues_only,
    families_for,
    resolve_model_ref,
)
from tui.model_pool import ModelPool
from tui.screens.chat import ChatScreen
from tui.screens.dialogs import ChoiceDialog, TextDialog
from tui.screens.help import HelpScreen
from tui.screens.welcome import WelcomeScreen
from tui.widgets.pane import describe_error, model_name

DEFAULTS_KEY = "default_models"  # {family: registry id}, set on the models screen
NO_STATE = "none"  # the state picker's first choice: start from the zero state


class RwkvApp(App[int]):
    TITLE = "rwkv-tui"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[Binding]] = [
        *bindings("app.help", "app.models", "app.jobs"),
        *[Binding(b.key, b.action, b.description, show=b.show, priority=True, id=b.id)
          for b in bindings("app.quit", "app.palette")],
    ]

    def __init__(self, model: str | None = None, resume: str | None = None, *, threads: int | None = None,
                 show_welcome: bool = True) -> None:
        super().__init__()
        self.start_model = model
        self.start_resume = resume
        self.show_welcome = show_welcome
        self.store: Any | None = None
        self.pool = ModelPool(threads)
        self.families: dict[str, Any] = {}
        self.keymap: dict[str, str] = {}
        self.chat: ChatScreen | None = None
        self.jobs: Any | None = None  # the registry's job queue, once started

    # --- start and stop ------------------------------------------------------------------------

    async def on_mount(self) -> None:
        self.keymap, warnings = load_keymap()
        if self.keymap:
            self.set_keymap(self.keymap)
        for w in warnings:
            self.notify(w, title="Keymap", severity="warning", timeout=10)
        self._load_families()
        self._open_store()
        self._start_jobs()
        self.chat = ChatScreen()
        await self.push_screen(self.chat)
        await self.chat.restore_tabs()
        await self._open_start_requests()
        if self.show_welcome and not self.chat.panes and not self.has_ready_model():
            self.push_screen(WelcomeScreen(), self._after_welcome)

    def _load_families(self) -> None:
        from runtime.text.templates import read_families

        try:
            self.families, warnings = read_families()
        except (RwkvError, OSError) as e:
            self.families, warnings = {}, [describe_error(e)]
        for w in warnings:
            self.notify(w, title="models.toml", severity="warning", timeout=10)

    def _open_store(self) -> None:
        from runtime.chat.store import ConversationStore

        try:
            self.store = ConversationStore.open()
        except Exception as e:
            self.store = None
            self.notify(f"{describe_error(e)}\nChats cannot start or be saved until this is fixed.",
                        title="Conversations", severity="error", timeout=30)

    def _start_jobs(self) -> None:
        """Attach to the registry's job queue (downloads and conversions run in its worker thread)."""
        from tui.job_link import JobLink

        try:
            self.jobs = JobLink(self)
        except Exception as e:
            self.jobs = None
            self.notify(describe_error(e), title="The job queue could not start", severity="error")

    async def on_jobs_changed(self, message: JobsChanged) -> None:
        if self.jobs is None:
            return
        for job in self.jobs.take_changes():
            if job.state == "done":
                self.notify(f"{job.model_id} is ready ({job.dtype or 'downloaded'}); ctrl+n starts a chat.",
                            title=f"Job #{job.id} done", timeout=10)
            elif job.state == "failed":
                self.notify(job.message, title=f"Job #{job.id} ({job.model_id}) failed", severity="error",
                            timeout=20)
            if job.finished:
                self.refresh_models()
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_jobs", None)
            if refresh is not None:
                await refresh()

    async def _open_start_requests(self) -> None:
        assert self.chat is not None
        if self.start_resume:
            try:
                cid = self._find_conversation(self.start_resume)
            except (RwkvError, ValueError, LookupError) as e:
                self.notify(describe_error(e), title="--resume", severity="error", timeout=12)
            else:
                await self.chat.open_saved(cid)
        if self.start_model:
            try:
                choice = self.choice_for(self.start_model)
            except Exception as e:
                self.notify(describe_error(e), title="--model", severity="error", timeout=12)
            else:
                await self.open_choice(choice)

    def _find_conversation(self, ref: str) -> int:
        if self.store is None:
            raise ValueError("the conversations database could not be opened")
        if ref == "last":
            cid = self.store.last_conversation_id()
            if cid is None:
                raise ValueError("there are no saved conversations to resume yet")
            return cid
        if not ref.isdigit():
            raise ValueError(f"--resume takes a conversation id or 'last', not {ref!r}")
        return self.store.get_conversation(int(ref)).id

    def _after_welcome(self, choice: str | None) -> None:
        if choice == "models":
            self.action_models()
        elif choice == "add":
            self.add_model_file()

    async def action_quit(self) -> None:
        if self.chat is not None:
            self.chat.save_tabs()
            for pane in self.chat.panes:
                pane.close()
        self.exit(0)

    def on_unmount(self) -> None:
        if self.jobs is not None:
            with contextlib.suppress(Exception):
                self.jobs.close()
        self.pool.close_all()
        if self.store is not None:
            self.store.close()

    # --- models --------------------------------------------------------------------------------

    def catalog(self) -> Any:
        from runtime.registry.catalog import load_catalog

        return load_catalog()

    def statuses(self) -> list[Any]:
        from runtime.registry.status import all_statuses

        jobs = self.jobs.list() if self.jobs is not None else []
        return all_statuses(self.catalog(), jobs)

    def has_ready_model(self) -> bool:
        try:
            return any(s.ready for s in self.statuses())
        except Exception:
            return False

    def defaults(self) -> dict[str, str]:
        value = self.store.get_app_value(DEFAULTS_KEY, {}) if self.store is not None else {}
        return value if isinstance(value, dict) else {}

    def set_default(self, family: str, model_id: str) -> None:
        if self.store is None:
            raise ValueError("the conversations database could not be opened, so defaults cannot be saved")
        defaults = self.defaults()
        defaults[family] = model_id
        self.store.set_app_value(DEFAULTS_KEY, defaults)

    def families_for(self, family: str, mode: str | None) -> list[str]:
        """Families a model of `family` can be used with in `mode`: its own first, then same-tokenizer ones."""
        return families_for(self.families, family, mode)

    def model_choices(self, mode: str | None = None, *, every_family: bool = False) -> list[ModelChoice]:
        """Every ready model, with each family it can be used with in `mode` (its own family if None).

        `every_family`: also every other family with the same tokenizer (Raven's file as a novel)."""
        choices = []
        for status in self.statuses():
            path = status.best_file()
            if path is None:
                continue
            entry = status.entry
            families = self.families_for(entry.family, mode)
            if every_family:
                own = self.families.get(entry.family)
                families += [name for name, f in self.families.items() if own is not None and name not in families
                             and f.tokenizer == own.tokenizer]
            for family in families:
                fam = self.families[family]
                label = f"{entry.name}  ·  {path.name}  ·  {fam.description}"
                choices.append(ModelChoice(label, path, entry.id, family, fam.mode))
        return choices

    def choice_for(self, path_or_id: str, mode: str | None = None) -> ModelChoice:
        """A model to open from `--model`: a registry id, or a file (registered on the way)."""
        return choice_for(self.catalog(), self.families, path_or_id, mode)

    def resolve_model_ref(self, ref: str) -> Path:
        """The file to load for a conversation's `model_ref` (a registry id or a path)."""
        return resolve_model_ref(self.catalog(), ref)

    async def new_conversation(self, mode: str) -> None:
        """A new tab in `mode` on the default model for it (asks when there is no obvious one)."""
        assert self.chat is not None
        try:
            choices = self.model_choices(mode)
        except Exception as e:
            self.notify(describe_error(e), title="Models", severity="error")
            return
        if not choices and mode == "chat":
            catalog = self.catalog()
            novels = [replace(c, note=continues_only(catalog.models[c.ref].name, self.families[c.family]))
                      for c in self.model_choices(None) if c.mode == "novel"]
            if novels:  # every ready model only continues text
                choices = novels
        if not choices:
            self.notify(f"No model for a {mode} is ready yet. Choose one to get on the models screen.",
                        title="No model", severity="warning", timeout=8)
            self.action_models()
            return
        choice = self._default_choice(mode, choices)
        if choice is not None:
            await self.open_choice(choice)
            return

        async def chosen(choice: ModelChoice | None) -> None:
            if choice is not None and self.chat is not None:
                await self.open_choice(choice)

        self.push_screen(ChoiceDialog(f"New {mode} with which model?", [(c.label, c) for c in choices],
                                      help="Set a default per family on the models screen (F2, s)."), chosen)

    def _default_choice(self, mode: str, choices: list[ModelChoice]) -> ModelChoice | None:
        pane = self.chat.active_pane if self.chat is not None else None
        if pane is not None and pane.model_path is not None and pane.mode == mode:
            same = [c for c in choices if c.path == pane.model_path and c.family == pane.family_name]
            if same:
                return same[0]
        defaults = self.defaults()
        for family, model_id in defaults.items():
            for c in choices:
                if c.ref == model_id and c.family == family:
                    return c
        own = [c for c in choices if self.families_for(c.family, None) == [c.family]]
        if len(choices) == 1:
            return choices[0]
        models = {c.path for c in choices}
        if len(models) == 1:  # one model, several templates: its own family
            return own[0] if own else choices[0]
        return None

    def choose_model(self, mode: str, title: str, then: Callable[[ModelChoice], Any],
                     exclude: tuple[Path | None, str] | None = None) -> None:
        """Ask which ready model (and template) to use; `then(choice)` unless cancelled.

        `exclude` is the (file, family) in use now, left out of the list."""
        try:
            choices = self.model_choices(None, every_family=True)
        except Exception as e:
            self.notify(describe_error(e), title="Models", severity="error")
            return
        if exclude is not None:
            path, family = exclude
            choices = [c for c in choices if not (path is not None and c.path.resolve() == Path(path).resolve()
                                                  and c.family == family)]
        choices.sort(key=lambda c: c.mode != mode)
        if not choices:
            self.notify("No other model is ready: get one on the models screen (F2).", severity="warning")
            return

        def chosen(choice: ModelChoice | None) -> None:
            if choice is not None:
                then(choice)

        self.push_screen(ChoiceDialog(title, [(c.label, c) for c in choices]), chosen)

    def add_model_file(self) -> None:
        """Ask for a model file, register it, and open a chat on it if it is runnable as is."""

        def entered(text: str | None) -> None:
            if not text:
                return
            try:
                from runtime.registry.status import register_local

                entry = register_local(Path(text.strip()).expanduser())
            except Exception as e:
                self.notify(describe_error(e), title="Cannot add the file", severity="error", timeout=12)
                return
            self.notify(f"Added {entry.name} ({entry.family}).", title="Models")
            self.refresh_models()
            try:
                choice = self.choice_for(entry.id)
            except ModelNotFoundError:
                self.notify("It needs converting before it can run: select it on the models screen and press c.",
                            timeout=10)
                return
            self.show_chat_on(choice)

        self.push_screen(TextDialog("Use a model file you have (.gguf, rwkv.cpp .bin, or BlinkDL .pth)",
                                    placeholder="/path/to/model.gguf"), entered)

    async def open_choice(self, choice: ModelChoice) -> None:
        """A new tab on `choice` (a model file with its family and mode). When starting states are
        registered for the model, first ask which one the conversation starts from (none by default)."""
        if self.chat is None:
            return
        try:
            from runtime.registry.states import states_for_file

            states = states_for_file(choice.ref, choice.path)
        except Exception as e:
            self.notify(f"{describe_error(e)}\nThis chat starts from no state.", title="Starting states",
                        severity="warning", timeout=12)
            states = []
        if not states:
            await self._open_tab(choice, None)
            return

        async def chosen(entry: Any) -> None:
            if entry is not None:  # esc: no new tab
                await self._open_tab(choice, None if entry == NO_STATE else (entry.name, entry.path))

        options: list[tuple[str, Any]] = [("No state: start from zero (the model as it is)", NO_STATE)]
        options += [(f"{e.name}  ·  {Path(e.path).name}" + ("" if Path(e.path).is_file() else "  (file missing)"), e)
                    for e in states]
        self.push_screen(ChoiceDialog(f"Start the new {choice.mode} on {model_name(choice.path)} from which state?",
                                      options, help="A state-tuned state sets the model's starting point (a "
                                      "persona, a task) instead of a prompt. esc: no new tab."), chosen)

    async def _open_tab(self, choice: ModelChoice, start_state: tuple[str, str] | None) -> None:
        if self.chat is not None:
            await self.chat.open_new(path=choice.path, model_ref=choice.ref, family=choice.family, mode=choice.mode,
                                     start_state=start_state)
            if choice.note:
                self.notify(choice.note, title="Novel tab", timeout=12)

    def add_state_file(self, model_ref: str | None = None) -> None:
        """Ask for a state-tuning file and register it as a starting state for the model `model_ref` (a
        registry id or a file), or for a ready model chosen from a list; a notice says what was written,
        or why the file does not fit."""
        if model_ref is None:
            from runtime.model.state_file import STATE_VERSIONS

            try:
                catalog = self.catalog()
                refs = list(dict.fromkeys(c.ref for c in self.model_choices(None)
                                          if catalog.models[c.ref].arch in STATE_VERSIONS))
            except Exception as e:
                self.notify(describe_error(e), title="Models", severity="error")
                return
            if not refs:
                self.notify("No model that takes starting states (RWKV-5.2, 6 or 7) is ready: get one on the "
                            "models screen (F2).", severity="warning")
                return

            def picked(ref: str | None) -> None:
                if ref is not None:
                    self.add_state_file(ref)

            self.push_screen(ChoiceDialog("Add a starting state for which model?",
                                          [(f"{catalog.models[r].name}  ·  {r}", r) for r in refs]), picked)
            return
        try:
            path = self.resolve_model_ref(model_ref)
        except Exception as e:
            self.notify(describe_error(e), title="Cannot add a state", severity="error", timeout=12)
            return

        def register(file: str, name: str | None) -> None:
            from runtime.registry.states import add_state_for_model, states_path

            try:
                entry = add_state_for_model(Path(file).expanduser(), model_ref, path, name=name)
            except Exception as e:
                self.notify(describe_error(e), title="Cannot add the state", severity="error", timeout=15)
                return
            self.notify(f"Registered {entry.path} as the state '{entry.name}' for {model_name(path)} (written to "
                        f"{states_path()}). New chats on it can start from it (ctrl+n).", title="State added",
                        timeout=15)

        def entered(text: str | None) -> None:
            if not text or not text.strip():
                return
            file = text.strip()
            from runtime.registry.states import states_for_file

            stem = Path(file).stem
            try:
                taken = {e.name for e in states_for_file(model_ref, path)}
            except Exception:
                taken = set()
            if stem not in taken:
                register(file, None)
                return

            def named(name: str | None) -> None:
                if name and name.strip():
                    register(file, name.strip())

            self.push_screen(TextDialog(f"{model_name(path)} already has a state called '{stem}': name this one",
                                        f"{stem}-2"), named)

        self.push_screen(TextDialog(f"Add a starting state for {model_name(path)}: a state-tuning file (.pth)",
                                    placeholder="/path/to/state.pth",
                                    help="BlinkDL state-tuning files (blocks.N.att.time_state) for RWKV-5.2, 6 "
                                         "and 7; the file must fit the model's shape."), entered)

    def show_chat_on(self, choice: ModelChoice) -> None:
        """Back to the main screen from the models screen, where a new tab on `choice` opens."""
        from tui.screens.models import ModelsScreen

        if isinstance(self.screen, ModelsScreen):  # show the chat it opens, not the list behind it
            self.screen.dismiss(None)
        self.call_later(self.open_choice, choice)

    def refresh_models(self) -> None:
        """Tell the screens that show models that the registry or files changed."""
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_models", None)
            if refresh is not None:
                refresh()
        if self.chat is not None:
            self.chat._update_empty()

    # --- screens and the command palette -------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap))

    def action_models(self) -> None:
        from tui.screens.models import ModelsScreen

        if not isinstance(self.screen, ModelsScreen):
            self.push_screen(ModelsScreen())

    def action_jobs(self) -> None:
        from tui.screens.jobs import JobsScreen

        if not isinstance(self.screen, JobsScreen):
            self.push_screen(JobsScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        def keyed(binding_id: str, title: str, help: str, target: Any) -> SystemCommand:
            k = KEYS[binding_id]
            keys = self.keymap.get(binding_id, k.keys)
            return SystemCommand(title, f"{help} · {key_label(keys)}",
                                 partial(self.run_action, k.action, target))

        chat = self.chat
        yield keyed("app.help", "Help: keys", "Every key and its id for keymap.toml", self)
        yield keyed("app.models", "Models", "The registry: download, convert, delete, set defaults", self)
        yield keyed("app.jobs", "Jobs", "Downloads and conversions with progress", self)
        yield SystemCommand("Use a model file…", "Register a .gguf/.bin/.pth you already have",
                            self.add_model_file)
        pane = chat.active_pane if chat is not None else None
        yield SystemCommand("Add a state file…", "Register a state-tuning .pth as a starting state for "
                            + ("this tab's model" if pane is not None and pane.model_ref else "a model")
                            + f" · {key_label(self.keymap.get('models.add_state', KEYS['models.add_state'].keys))}"
                            " on the models screen",
                            partial(self.add_state_file, pane.model_ref if pane is not None else None))
        if chat is not None:
            yield keyed("pane.new_chat", "New chat", "A new conversation tab in chat mode", chat)
            yield keyed("pane.new_novel", "New novel", "A new tab where the model continues your text", chat)
            yield keyed("pane.search", "Search conversations", "Full-text search over every message", chat)
            yield keyed("pane.sidebar", "Toggle the sidebar", "Show or hide the conversation list", chat)
            if chat.active_pane is not None:
                for binding_id, title, help in (
                    ("pane.stop", "Stop", "Stop the reply being written (it is kept)"),
                    ("pane.regenerate", "Regenerate", "Write the last reply again (nothing re-read)"),
                    ("pane.continue", "Continue / write more", "Continue a cut reply, or write more (novel)"),
                    ("pane.edit_last", "Edit last message", "Edit your last message and reply again"),
                    ("pane.messages", "Select a message", "Edit, copy or fork from any message"),
                    ("pane.fork", "Fork", "Copy this conversation into a new tab"),
                    ("pane.switch_model", "Switch model", "Continue this conversation on another model"),
                    ("pane.sampling", "Sampling settings", "Temperature, top-p, penalties, max tokens"),
                    ("pane.think", "Thinking on/off",
                     "G1 models: reason first (slower), or answer at once (the empty think block)"),
                    ("pane.export", "Export to Markdown", "Save this conversation as a .md file"),
                    ("pane.save_state", "Save state…",
                     "Save the conversation's state as a starting state for its model (a state-tuning .pth)"),
                    ("pane.copy_reply", "Copy last reply", "Copy the last reply to the clipboard"),
                    ("pane.close", "Close tab", "Close this tab (the conversation stays saved)"),
                ):
                    yield keyed(binding_id, title, help, chat)
                if chat.active_pane.system_prompt_blocked() is None:
                    yield SystemCommand("System prompt…", "Instructions read before the first message (G1)",
                                        partial(self.run_action, "system_prompt", chat))
                yield SystemCommand("Undo", "Remove your last message and its reply",
                                    partial(self.run_action, "undo", chat))
                yield SystemCommand("Clear conversation", "Remove every message of this conversation",
                                    partial(self.run_action, "reset", chat))
        yield from super().get_system_commands(screen)


def run_app(model: str | None = None, resume: str | None = None) -> int:
    """Run the app until the user quits; the exit status for the shell."""
    app = RwkvApp(model=model, resume=resume)
    result = app.run()
    return int(result or 0) if app.return_code is None else app.return_code
