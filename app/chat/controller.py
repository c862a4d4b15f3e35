"""The chat's logic: which conversation is shown, sending, streaming into the store, stop,
regenerate, edit-and-resend, and moving between branches. Talks to the engine only through the
EngineBridge (protocol requests out, Qt signals in)."""
from __future__ import annotations

import time

from PySide6.QtCore import QObject, Signal

from app.chat.chat_view import ChatView
from app.dialogs.chat_settings import generate_fields
from app.store import Message, Store

COMMIT_EVERY_S = 1.0          # a streaming reply is written to disk at least this often


class ChatController(QObject):
    conversationsChanged = Signal()
    conversationOpened = Signal(str)          # id
    replyStarted = Signal(str)                # message id
    replyFinished = Signal(str, object)       # message id, stats dict (Signal(dict) leaks refcounts in PySide6)

    def __init__(self, store: Store, bridge, view: ChatView, sampling, parent=None):
        """sampling: a callable returning Generate's sampling fields (the defaults, from the settings)."""
        super().__init__(parent)
        self.store, self.bridge, self.view, self.sampling = store, bridge, view, sampling
        self.conversation_id: str | None = None
        self.request_id: str | None = None
        self.reply_id: str | None = None
        self._reply_text = ""
        self._last_commit = 0.0
        self._error = ""
        self._draft: tuple[str, dict | None] = ("", None)   # system prompt, sampling of a chat not yet created
        view.sendRequested.connect(self.send)
        view.stopRequested.connect(self.stop)
        view.regenerateRequested.connect(self.regenerate)
        view.editRequested.connect(self.edit)
        view.branchRequested.connect(self.switch_branch)
        bridge.token.connect(self._on_token)
        bridge.generationDone.connect(self._on_done)
        bridge.error.connect(self._on_error)
        self.show_settings()

    @property
    def generating(self) -> bool:
        return self.request_id is not None

    # ---------------------------------------------------------------- conversations
    def new_conversation(self) -> None:
        """An empty thread; the conversation is created on the first message."""
        if self.generating:
            self.stop()
        self.conversation_id = None
        self._draft = ("", None)
        self.view.clear()
        self.show_settings()
        self.conversationOpened.emit("")

    def defaults(self) -> dict:
        return {"seed": None, **self.sampling()}

    def chat_settings(self) -> tuple[str, dict]:
        """The shown conversation's system prompt and sampling (every field, defaults filled in)."""
        if self.conversation_id is None:
            prompt, own = self._draft
        else:
            c = self.store.conversation(self.conversation_id)
            prompt, own = (c.system_prompt, c.sampling) if c else ("", None)
        return prompt, generate_fields(self.defaults(), own)

    def set_chat_settings(self, system_prompt: str, sampling: dict) -> None:
        """Keep them with the conversation (for a chat not yet created: until its first message)."""
        if self.conversation_id is None:
            self._draft = (system_prompt, dict(sampling))
        else:
            self.store.set_system_prompt(self.conversation_id, system_prompt)
            self.store.set_sampling(self.conversation_id, dict(sampling))
        self.show_settings()

    def show_settings(self) -> None:
        """Show the conversation's system prompt and sampling in the chat's header."""
        self.view.header.set_values(*self.chat_settings())

    def open_conversation(self, cid: str) -> None:
        if cid == self.conversation_id:
            return
        if self.generating:
            self.stop()
        self.conversation_id = cid
        self.render()
        self.show_settings()
        self.conversationOpened.emit(cid)

    def render(self) -> None:
        self.view.clear()
        if self.conversation_id is None:
            return
        for m in self.store.thread(self.conversation_id):
            sibs = self.store.siblings(m.id)
            idx = next(i for i, s in enumerate(sibs) if s.id == m.id)
            self.view.add_message(m.id, m.role, m.content, stats=m.stats, branch=(idx + 1, len(sibs)))
        self.view.set_generating(self.generating)

    # ---------------------------------------------------------------- actions
    def send(self, text: str) -> None:
        if self.generating or not text.strip():
            return
        if self.conversation_id is None:
            title = " ".join(text.split())[:48]
            prompt, own = self._draft
            self.conversation_id = self.store.create_conversation(
                title, system_prompt=prompt, sampling=own if own is not None else self.sampling()).id
            self._draft = ("", None)
            self.show_settings()
            self.conversationsChanged.emit()
            self.conversationOpened.emit(self.conversation_id)
        thread = self.store.thread(self.conversation_id)
        parent = thread[-1].id if thread else None
        user = self.store.add_message(self.conversation_id, parent, "user", text)
        self.view.add_message(user.id, "user", text)
        self._start_reply(user)

    def regenerate(self, message_id: str) -> None:
        m = self.store.message(message_id)
        if self.generating or m is None or m.parent_id is None:
            return
        self._start_reply(self.store.message(m.parent_id), rerender=True)

    def edit(self, message_id: str, text: str) -> None:
        m = self.store.message(message_id)
        if self.generating or m is None:
            return
        user = self.store.add_message(m.conversation_id, m.parent_id, "user", text)
        self.render()
        self._start_reply(user)

    def switch_branch(self, message_id: str, delta: int) -> None:
        if self.generating:
            return
        sibs = self.store.siblings(message_id)
        ids = [s.id for s in sibs]
        if message_id not in ids:
            return
        target = ids[max(0, min(len(ids) - 1, ids.index(message_id) + delta))]
        self.store.show_branch(target)
        self.render()

    def stop(self) -> None:
        if self.request_id is not None:
            self.bridge.cancel(self.request_id)

    # ---------------------------------------------------------------- a reply
    def _start_reply(self, user: Message, rerender: bool = False) -> None:
        cid = user.conversation_id
        conv = self.store.conversation(cid)
        history = self.store.thread(cid, user.id)
        messages = ([{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else [])
        messages += [{"role": m.role, "content": m.content} for m in history]
        reply = self.store.add_message(cid, user.id, "assistant", "", complete=False)
        if rerender:
            self.render()
        else:
            n = len(self.store.siblings(reply.id))
            self.view.add_message(reply.id, "assistant", "", branch=(n, n))
        self.reply_id, self._reply_text, self._error = reply.id, "", ""
        self._last_commit = time.monotonic()
        fields = generate_fields(self.defaults(), conv.sampling)
        rid = self.bridge.generate(messages=messages, conversation_id=cid, **fields)
        if rid is None:                       # engine not running: the error signal said why
            self._finish({"stop_reason": "error"})
            return
        self.request_id = rid
        self.view.set_generating(True)
        self.replyStarted.emit(reply.id)

    def _on_token(self, request_id: str, _token_id: int, text: str) -> None:
        if request_id != self.request_id or not text:
            return
        self._reply_text += text
        w = self.view.widget(self.reply_id)
        if w is not None:
            w.append(text)
        if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self.store.update_message(self.reply_id, self._reply_text, complete=False)
            self._last_commit = time.monotonic()

    def _on_done(self, ev) -> None:
        if ev.request_id != self.request_id:
            return
        if ev.text and ev.stop_reason != "error":
            self._reply_text = ev.text
        self._finish({"stop_reason": ev.stop_reason, "tok_s": round(ev.tok_s, 2), "ttft_s": round(ev.ttft_s, 3),
                      "n_tokens": ev.n_tokens, "prompt_tokens": ev.prompt_tokens, "n_eval": ev.n_eval,
                      **({"left_out": ev.left_out} if ev.left_out else {})})

    def _on_error(self, kind: str, message: str, request_id) -> None:
        if request_id is not None and request_id == self.request_id:
            self._error = message

    def _finish(self, stats: dict) -> None:
        if self._error:
            stats["error"] = self._error
        mid = self.reply_id
        self.store.update_message(mid, self._reply_text, complete=True, stats=stats)
        w = self.view.widget(mid)
        if w is not None:
            w.set_text(self._reply_text, now=True)
            w.set_stats(stats)
        self.request_id, self.reply_id = None, None
        self.view.set_generating(False)
        self.conversationsChanged.emit()
        self.replyFinished.emit(mid, stats)
