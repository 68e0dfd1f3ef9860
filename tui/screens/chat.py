"""The main screen: saved conversations on the left, conversation tabs on the right, keys in the footer.

Actions on the open conversation (regenerate, stop, fork, …) are bindings of this screen that act on
the active tab, so they work wherever the focus is (prompt, message list, sidebar). The open tabs are
saved in the store (`open_tabs`) whenever they change, and restored at the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Markdown, TabbedContent

from tui.export import code_blocks, conversation_markdown, export_path
from tui.keymap import bindings
from tui.messages import ConversationsChanged, Forked, OpenConversation
from tui.screens.dialogs import ChoiceDialog, ConfirmDialog, TextDialog
from tui.screens.settings import SamplingDialog
from tui.widgets.conversation import ConversationView
from tui.widgets.pane import ChatPane, describe_error, model_name
from tui.widgets.prompt import PromptArea
from tui.widgets.sidebar import ConversationList, Sidebar

OPEN_TABS_KEY = "open_tabs"

EMPTY = """\
## No conversation open

* **ctrl+n** starts a chat, **ctrl+t** a novel (the model continues your text).
* Pick a saved conversation on the left, or search them all (**ctrl+f**).
* **F2** lists models (download, convert), **F3** shows running jobs, **F1** every key.
"""

NO_MODEL = """\
## No model is ready yet

Press **F2** to choose one from the registry (it is downloaded and converted in the background),
or use a model file you already have from the models screen (**o**).
"""


class ChatScreen(Screen[None]):
    BINDINGS: ClassVar[list[Binding]] = bindings(
        "pane.stop", "pane.new_chat", "pane.new_novel", "pane.regenerate", "pane.continue", "pane.edit_last",
        "pane.switch_model", "pane.sampling", "pane.fork", "pane.export", "pane.copy_reply", "pane.messages",
        "pane.close", "pane.next_tab", "pane.prev_tab", "pane.sidebar", "pane.search", "pane.think",
        "pane.save_state",
    )

    def __init__(self) -> None:
        super().__init__(id="chat-screen")
        self._next_pane = 0
        self._restoring = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield TabbedContent(id="tabs")
                yield Markdown(EMPTY, id="empty")
        yield Footer(compact=True)

    @property
    def tabs(self) -> TabbedContent:
        return self.query_one("#tabs", TabbedContent)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def panes(self) -> list[ChatPane]:
        return list(self.query(ChatPane))

    @property
    def active_pane(self) -> ChatPane | None:
        pane = self.tabs.active_pane
        return pane if isinstance(pane, ChatPane) else None

    def _require_pane(self) -> ChatPane:
        pane = self.active_pane
        if pane is None:
            self.app.notify("Open a conversation first (ctrl+n starts a chat).", severity="warning")
            raise SkipAction()
        return pane

    def on_mount(self) -> None:
        self._update_empty()

    PANE_ACTIONS = frozenset({
        "regenerate", "continue_reply", "edit_last", "switch_model", "sampling", "fork", "export", "copy_reply",
        "focus_messages", "close_tab", "undo", "reset", "save_state",
    })

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide actions that need an open conversation when there is none; esc only while work runs.

        Regenerate and continue stay on with nothing to act on, so their keys say so in a notice."""
        if action == "stop":
            pane = self.active_pane
            return pane is not None and bool(pane.busy)
        pane = self.active_pane
        if action in self.PANE_ACTIONS:
            return pane is not None
        if action in ("next_tab", "prev_tab"):
            return len(self.panes) > 1
        return True

    def _update_empty(self) -> None:
        empty = self.query_one("#empty", Markdown)
        has_tabs = bool(self.panes)
        self.tabs.display = has_tabs
        empty.display = not has_tabs
        if not has_tabs:
            empty.update(EMPTY if self.app.has_ready_model() else NO_MODEL)  # type: ignore[attr-defined]

    # --- opening and closing tabs --------------------------------------------------------------

    async def add_pane(self, pane: ChatPane, activate: bool = True) -> ChatPane:
        await self.tabs.add_pane(pane)
        if activate:
            self.tabs.active = pane.id or ""
        self._update_empty()
        self.refresh_bindings()
        if activate:
            # now, so keys that arrive before the next refresh (a paste, or typing as the tab opens on a
            # model that loads at once) go to the prompt, not the sidebar's search that the screen
            # focused first; and again after the refresh, for the tab that shows then
            self.focus_active_prompt(now=True)
            self.call_after_refresh(self.focus_active_prompt)
        self.save_tabs()
        return pane

    def focus_active_prompt(self, now: bool = False) -> None:
        """Put the focus in the prompt of the tab that shows. Never a hidden tab's widget: focusing
        one makes its tab the active one again (what used to happen when tabs opened at start)."""
        if not now:  # which tab shows is looked up when the focus moves, not now
            self.call_later(self.focus_active_prompt, True)
            return
        pane = self.active_pane
        if pane is not None and pane.is_mounted:
            self.set_focus(pane.prompt)

    def _pane_id(self) -> str:
        self._next_pane += 1
        return f"pane-{self._next_pane}"

    async def open_new(self, *, path: Path, model_ref: str, family: str, mode: str,
                       start_state: tuple[str, str] | None = None) -> ChatPane:
        """A tab for a new conversation; `start_state`: (name, file) of the registered state it starts from."""
        title = "New chat" if mode == "chat" else "New novel"
        pane = ChatPane(self._pane_id(), title=title, family=family, mode=mode, model_path=path, model_ref=model_ref,
                        start_state=start_state)
        return await self.add_pane(pane)

    async def open_saved(self, conversation_id: int, seq: int | None = None, activate: bool = True) -> ChatPane | None:
        for pane in self.panes:
            if pane.conversation_id == conversation_id:
                if activate:
                    self.tabs.active = pane.id or ""
                if seq is not None:
                    pane.view.select_seq(seq)
                return pane
        try:
            record = self.app.store.get_conversation(conversation_id)  # type: ignore[attr-defined]
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot open the conversation", severity="error")
            return None
        pane = ChatPane(self._pane_id(), title=record.title, family=record.family, mode=record.mode,
                        conversation_id=conversation_id, model_ref=record.model_ref, select_seq=seq)
        return await self.add_pane(pane, activate)

    async def close_pane(self, pane: ChatPane) -> None:
        pane.close()
        await self.tabs.remove_pane(pane.id or "")
        self._update_empty()
        self.refresh_bindings()
        self.save_tabs()
        self.focus_active_prompt()

    async def restore_tabs(self) -> None:
        """Reopen the tabs that were open when the app last quit."""
        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            return
        saved = store.get_app_value(OPEN_TABS_KEY, {}) or {}
        ids = [i for i in saved.get("ids", []) if isinstance(i, int)]
        active = saved.get("active")
        self._restoring = True
        try:
            for conversation_id in ids:
                try:
                    store.get_conversation(conversation_id)
                except Exception:
                    continue  # deleted meanwhile (e.g. from the line-mode chat)
                await self.open_saved(conversation_id, activate=conversation_id == active or active is None)
        finally:
            self._restoring = False
        self.save_tabs()

    def save_tabs(self) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        if store is None or self._restoring:
            return
        ids = [p.conversation_id for p in self.panes if p.conversation_id is not None]
        active = self.active_pane
        value = {"ids": ids, "active": active.conversation_id if active is not None else None}
        try:
            store.set_app_value(OPEN_TABS_KEY, value)
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot save the open tabs", severity="warning")

    @on(TabbedContent.TabActivated)
    def _tab_activated(self) -> None:
        self.save_tabs()
        self.refresh_bindings()
        pane = self.active_pane
        if pane is not None:
            pane.refresh_status()
            self.sidebar.show_current(pane.conversation_id)
            if not self._focus_is_deliberate(pane):
                self.focus_active_prompt()

    def _focus_is_deliberate(self, pane: ChatPane) -> bool:
        """Whether the focus is somewhere the user put it for the tab that shows now (the sidebar, a
        message of this tab), rather than nowhere, on the tab bar, or in a hidden tab."""
        focused = self.focused
        return focused is not None and (focused in pane.walk_children() or focused in self.sidebar.walk_children())

    def on_conversations_changed(self, message: ConversationsChanged) -> None:
        self.sidebar.reload()
        pane = self.active_pane
        if pane is not None:
            self.sidebar.show_current(pane.conversation_id)
        self.save_tabs()

    async def on_open_conversation(self, message: OpenConversation) -> None:
        pane = await self.open_saved(message.conversation_id, message.seq)
        if pane is not None and message.seq is None:
            pane.prompt.focus()

    async def on_forked(self, message: Forked) -> None:
        conv = message.conversation
        pane = ChatPane(self._pane_id(), title=conv.title, family=conv.family.name, mode=conv.mode,
                        conversation=conv, model_ref=self._model_ref_of(conv))
        await self.add_pane(pane)
        self.sidebar.reload()
        self.app.notify(f"Forked into a new tab: {conv.title}")

    def _model_ref_of(self, conv: Any) -> str | None:
        try:
            return conv.record.model_ref
        except Exception:
            return None

    # --- the prompt and the message list --------------------------------------------------------

    async def on_prompt_area_submitted(self, message: PromptArea.Submitted) -> None:
        pane = next((a for a in message.prompt.ancestors if isinstance(a, ChatPane)), None)
        if pane is not None:
            await pane.send(message.text)

    async def on_conversation_view_selected(self, message: ConversationView.Selected) -> None:
        pane = next((a for a in message.view.ancestors if isinstance(a, ChatPane)), None)
        if pane is None:
            return
        shown = message.shown
        if message.what == "back":
            pane.prompt.focus()
        elif message.what == "type":
            pane.prompt.focus()
            pane.prompt.insert(shown.content)
        elif message.what == "copy":
            self._copy(shown.parts()[1], "Message copied")  # a reply's answer, not its reasoning
        elif message.what == "copy_code":
            self._copy_code(shown.parts()[1])
        elif message.what == "fork":
            if shown.seq is None:
                self.app.notify("Wait until the message is saved.", severity="warning")
            else:
                pane.fork(shown.seq)
        elif message.what == "edit":
            self._edit(pane, shown)

    def _copy(self, text: str, note: str) -> None:
        self.app.copy_to_clipboard(text)
        self.app.notify(f"{note} ({len(text)} characters).", timeout=3)

    def _copy_code(self, text: str) -> None:
        blocks = code_blocks(text)
        if not blocks:
            self.app.notify("This message has no code block.", severity="warning")
        elif len(blocks) == 1:
            self._copy(blocks[0], "Code copied")
        else:
            choices = [(f"{i + 1}. {b.strip().splitlines()[0][:60] if b.strip() else '(empty)'}", b)
                       for i, b in enumerate(blocks)]

            def chosen(block: str | None) -> None:
                if block is not None:
                    self._copy(block, "Code copied")

            self.app.push_screen(ChoiceDialog("Copy which code block?", choices), chosen)

    def _edit(self, pane: ChatPane, shown: Any) -> None:
        if shown.role not in ("user", "text"):
            self.app.notify("Only your own messages can be edited; ctrl+r writes the last reply again.",
                            severity="warning")
            return
        if shown.seq is None:
            self.app.notify("Wait until the message is saved.", severity="warning")
            return

        async def edited(text: str | None) -> None:
            if text is not None and text.strip() and text != shown.content:
                await pane.edit(shown.seq, text)

        self.app.push_screen(
            TextDialog("Edit the message (the conversation continues from here; later messages are replaced)",
                       shown.content, multiline=True, ok="Send", help="ctrl+s sends · esc cancels"),
            edited,
        )

    # --- sidebar actions -----------------------------------------------------------------------

    async def on_conversation_list_act(self, message: ConversationList.Act) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        if message.what == "toggle_archived":
            self.sidebar.toggle_archived()
            return
        cid = message.conversation_id
        if cid is None or store is None:
            return
        record = self.sidebar.record(cid)
        title = record.title if record is not None else f"conversation {cid}"
        open_pane = next((p for p in self.panes if p.conversation_id == cid), None)
        if message.what == "rename":
            def renamed(new: str | None) -> None:
                if new and new.strip():
                    try:
                        store.rename(cid, new.strip())
                    except Exception as e:
                        self.app.notify(describe_error(e), title="Cannot rename", severity="error")
                        return
                    if open_pane is not None:
                        open_pane.set_title(new.strip())
                    self.sidebar.reload()

            self.app.push_screen(TextDialog("Rename the conversation", title), renamed)
        elif message.what == "delete":
            async def confirmed(yes: bool | None) -> None:
                if not yes:
                    return
                if open_pane is not None:
                    await self.close_pane(open_pane)
                try:
                    store.delete_conversation(cid)
                except Exception as e:
                    self.app.notify(describe_error(e), title="Cannot delete", severity="error")
                self.sidebar.reload()

            self.app.push_screen(ConfirmDialog(f"Delete “{title}” and all its messages?", "Delete"), confirmed)
        elif message.what == "archive":
            archived = bool(record.archived) if record is not None else False
            try:
                store.set_archived(cid, not archived)
            except Exception as e:
                self.app.notify(describe_error(e), title="Cannot archive", severity="error")
                return
            self.app.notify(f"“{title}” {'restored' if archived else 'archived (v shows archived)'}.", timeout=3)
            self.sidebar.reload()

    # --- key actions ---------------------------------------------------------------------------

    def action_stop(self) -> None:
        pane = self.active_pane
        if pane is None or not pane.stop():
            raise SkipAction()

    async def action_new_chat(self) -> None:
        await self.app.new_conversation("chat")  # type: ignore[attr-defined]

    async def action_new_novel(self) -> None:
        await self.app.new_conversation("novel")  # type: ignore[attr-defined]

    async def action_regenerate(self) -> None:
        await self._require_pane().regenerate()

    async def action_continue_reply(self) -> None:
        await self._require_pane().continue_reply()

    def action_edit_last(self) -> None:
        pane = self._require_pane()
        mine = [v.shown for v in pane.view.views if v.shown.role in ("user", "text")]
        if not mine:
            self.app.notify("There is no message of yours to edit yet.", severity="warning")
            return
        self._edit(pane, mine[-1])

    def action_undo(self) -> None:
        self._require_pane().undo()

    def action_reset(self) -> None:
        pane = self._require_pane()

        def confirmed(yes: bool | None) -> None:
            if yes:
                pane.reset()

        self.app.push_screen(ConfirmDialog("Clear every message of this conversation?", "Clear"), confirmed)

    def action_fork(self) -> None:
        self._require_pane().fork()

    def action_switch_model(self) -> None:
        pane = self._require_pane()
        self.app.choose_model(  # type: ignore[attr-defined]
            pane.mode, f"Continue “{pane.tab_title}” with…",
            lambda choice: pane.switch_model(choice.path, choice.ref, choice.family),
            exclude=(pane.model_path, pane.family_name) if pane.model is not None else None,
        )

    def action_think(self) -> None:
        self._require_pane().toggle_think()

    def action_system_prompt(self) -> None:
        pane = self._require_pane()
        reason = pane.system_prompt_blocked()
        if reason is not None:
            self.app.notify(reason, severity="warning")
            return

        def chosen(text: str | None) -> None:
            if text is not None and pane.set_system_prompt(text):
                self.app.notify("The system prompt is read before your first message.", title="System prompt")

        self.app.push_screen(TextDialog("System prompt (read before the first message of this chat)",
                                        pane.system_prompt, multiline=True, ok="Save",
                                        help="ctrl+s saves · esc cancels"), chosen)

    def action_sampling(self) -> None:
        pane = self._require_pane()
        settings = pane.sampling()
        if settings is None:
            self.app.notify("Unknown model family; cannot edit its sampling.", severity="warning")
            return
        family = self.app.families.get(pane.family_name)  # type: ignore[attr-defined]

        def saved(new: Any) -> None:
            if new is None:
                return
            try:
                pane.set_sampling(new)
            except Exception as e:
                self.app.notify(describe_error(e), title="Cannot save the settings", severity="error")
                return
            self.app.notify("Sampling settings saved for this conversation.", timeout=3)

        defaults = family.sampling if family is not None else None
        self.app.push_screen(SamplingDialog(settings, defaults, f"Sampling for “{pane.tab_title}”"), saved)

    def action_export(self) -> None:
        pane = self._require_pane()
        if not pane.view.views:
            self.app.notify("There is nothing to export yet.", severity="warning")
            return
        default = export_path(pane.tab_title)

        def chosen(path_text: str | None) -> None:
            if not path_text or not path_text.strip():
                return
            from runtime.atomic import atomic_write_bytes

            path = default.parent / Path(path_text.strip()).expanduser()  # a bare name: in the proposed folder
            text = conversation_markdown(pane.tab_title, pane.mode, model_name(pane.model_path or pane.model_ref),
                                         [v.shown for v in pane.view.views])
            try:
                atomic_write_bytes(path, text.encode("utf-8"))
            except OSError as e:
                self.app.notify(describe_error(e), title="Cannot export", severity="error")
                return
            self.app.notify(f"Saved to {path.resolve()}", title="Exported", timeout=10)

        self.app.push_screen(TextDialog("Export the conversation to a Markdown file", str(default)), chosen)

    def action_save_state(self) -> None:
        pane = self._require_pane()
        if pane.conversation is None:
            pane.save_state("")  # says why there is nothing to save
            return

        def chosen(name: str | None) -> None:
            if name and name.strip():
                pane.save_state(name.strip())

        model = model_name(pane.model_path or pane.model_ref)
        self.app.push_screen(TextDialog(f"Save this conversation's state as a starting state for {model}",
                                        placeholder="a name, e.g. pirate-persona",
                                        help="New chats on this model can then start from it (ctrl+n); the "
                                             "file is written to the data folder's states/."), chosen)

    def action_copy_reply(self) -> None:
        pane = self._require_pane()
        replies = [v.shown for v in pane.view.views if v.shown.role == "assistant"]
        if not replies:
            self.app.notify("There is no reply to copy yet.", severity="warning")
            return
        self._copy(replies[-1].parts()[1], "Reply copied")  # the answer, not the reasoning

    def action_focus_messages(self) -> None:
        pane = self._require_pane()
        if pane.view.views:
            pane.view.focus()

    async def action_close_tab(self) -> None:
        await self.close_pane(self._require_pane())

    def _step_tab(self, step: int) -> None:
        panes = self.panes
        if len(panes) < 2:
            return
        current = self.active_pane
        i = panes.index(current) if current in panes else 0
        target = panes[(i + step) % len(panes)]
        self.tabs.active = target.id or ""
        target.prompt.focus()

    def action_next_tab(self) -> None:
        self._step_tab(1)

    def action_prev_tab(self) -> None:
        self._step_tab(-1)

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display

    def action_search(self) -> None:
        self.sidebar.display = True
        self.sidebar.focus_search()
