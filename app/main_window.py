"""The main window: top bar, conversations on the left, the chat in the middle, telemetry on the
right, status at the bottom. It wires the parts together; each part lives in its own module."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import QApplication, QFileDialog, QMainWindow, QMessageBox, QSplitter, QToolBar

from app import qt_fixes, window_state
from app.chat.banner import Banner
from app.chat.chat_view import ChatView
from app.chat.controller import ChatController
from app.chat.welcome import KNOWN_MODELS
from app.dialogs.chat_settings import ChatSettingsDialog
from app.dialogs.settings_dialog import SettingsDialog
from app.drop_overlay import DropOverlay
from app.load_flow import LoadFlow
from app.local_server import LocalServer, stop_leftover
from app.pull_progress import PullProgress
from app.server_panel import ServerPanel
from app.settings import AppSettings
from app.sidebar import Sidebar
from app.status_bar import StatusBar
from app.store import Store
from app.telemetry.dock import TelemetryDock
from app.theme import apply_theme
from app.top_bar import TopBar
from engine import protocol as P


class MainWindow(QMainWindow):
    def __init__(self, store: Store, settings: AppSettings, bridge, *, start_engine: bool = True):
        super().__init__()
        qt_fixes.install()
        qt_fixes.collect_on_gui_thread()       # no QObject freed by the collector on a worker thread
        self.store, self.settings, self.bridge = store, settings, bridge
        self.setWindowTitle("Cellar")
        self.resize(1280, 800)
        self.setAcceptDrops(True)
        self.model: P.ModelLoaded | None = None
        self._pending_load: tuple[str, dict] | None = None
        self.chat_settings_dialog: ChatSettingsDialog | None = None

        self.top = TopBar()
        bar = QToolBar("Top bar")
        bar.setObjectName("top_bar")
        bar.setMovable(False)
        bar.addWidget(self.top)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)

        self.sidebar = Sidebar(store)
        self.chat = ChatView()
        self.notice = Banner()
        self.notice.setStyleSheet("#banner { background: #8a6d1a; border-radius: 6px; } #banner QLabel { color: white; }")
        self.chat.layout().insertWidget(0, self.notice)
        self.split = QSplitter()
        self.split.addWidget(self.sidebar)
        self.split.addWidget(self.chat)
        self.split.setStretchFactor(1, 1)
        self.split.setSizes([220, 760])
        self.setCentralWidget(self.split)
        self.dock = TelemetryDock(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.server = LocalServer(self)
        self.server_dock = ServerPanel(self.server, self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.server_dock)
        self.tabifyDockWidget(self.dock, self.server_dock)
        self.dock.raise_()
        self._server_settings_in()
        self.status = StatusBar(lambda: store.last_write)
        self.setStatusBar(self.status)
        if stop_leftover() is not None:
            self.status.showMessage("Stopped a local server an earlier window left running", 15000)
        self.overlay = DropOverlay(self)

        self.controller = ChatController(store, bridge, self.chat, lambda: self.settings.sampling(), self)
        self.loader = LoadFlow(self, bridge, lambda: self.settings)
        self.chat.welcome.set_progress_widget(PullProgress(self.loader.pulls))
        self.status_pull = PullProgress(self.loader.pulls, compact=True)
        self.status.addPermanentWidget(self.status_pull)
        self.kv_timer = QTimer(self, interval=500, timeout=self._ask_kv)   # the cell map follows a reply
        self._wire()
        self._menus()
        self._refresh_models_menu()
        if not window_state.restore(self):
            self.resizeDocks([self.dock], [330], Qt.Orientation.Horizontal)
        self.chat.show_welcome(True)
        if start_engine:
            self._start_engine()

    # ---------------------------------------------------------------- wiring
    def _wire(self) -> None:
        b, c = self.bridge, self.controller
        self.sidebar.conversationSelected.connect(self.open_conversation)
        self.sidebar.newRequested.connect(self.new_chat)
        self.sidebar.deleted.connect(lambda cid: c.new_conversation() if cid == c.conversation_id else None)
        c.conversationsChanged.connect(self.sidebar.refresh)
        c.conversationOpened.connect(self.sidebar.select)
        c.replyFinished.connect(self._reply_finished)
        c.replyStarted.connect(self._reply_started)
        self.top.settingsRequested.connect(self.open_settings)
        self.top.dockToggled.connect(lambda: self.dock.setVisible(not self.dock.isVisible()))
        self.chat.banner.action.connect(self.restart_engine)
        self.chat.header.editRequested.connect(self.open_chat_settings)
        self.notice.action.connect(self.notice.hide)
        self.chat.welcome.pullRequested.connect(self.loader.pull)
        self.chat.welcome.openRequested.connect(self.open_file_dialog)
        self.chat.welcome.modelChosen.connect(self.loader.open_path)
        self.loader.notice.connect(self.show_notice)
        self.loader.pullState.connect(lambda name, msg: self.chat.welcome.set_pulling(name, msg))
        self.loader.pulls.finished.connect(lambda *_: self._refresh_models_menu())
        self.server_dock.optionsChanged.connect(self._server_settings_out)
        self.server.stateChanged.connect(self._server_state)
        self.server.health.connect(self._server_health)
        b.stateChanged.connect(self._state_changed)
        b.crashed.connect(self._crashed)
        b.modelLoaded.connect(self._model_loaded)
        b.telemetry.connect(self._telemetry)
        b.event.connect(self._event)            # KV snapshots: their dicts have int keys, which Signal(dict) drops
        b.error.connect(self._error)
        QShortcut(QKeySequence("Esc"), self, activated=c.stop)

    def _menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        m.addAction("&Open model…", QKeySequence.StandardKey.Open, self.open_file_dialog)
        self.recent_menu = m.addMenu("Recent models")
        self.known_menu = m.addMenu("Known models")
        m.addSeparator()
        m.addAction("&Quit", QKeySequence.StandardKey.Quit, self.close)
        m = self.menuBar().addMenu("&Chat")
        self.new_action = m.addAction("&New chat", QKeySequence("Ctrl+N"), self.new_chat)
        m.addAction("&Stop reply", self.controller.stop).setToolTip("Esc")
        m.addAction("System prompt && &sampling…", self.open_chat_settings)
        m = self.menuBar().addMenu("&View")
        toggle: QAction = self.dock.toggleViewAction()
        toggle.setText("Telemetry panel")
        m.addAction(toggle)
        toggle = self.server_dock.toggleViewAction()
        toggle.setText("Local server panel")
        m.addAction(toggle)
        m.addAction("&Settings…", QKeySequence.StandardKey.Preferences, self.open_settings)

    def _refresh_models_menu(self) -> None:
        from engine.pull import cached_path
        menus = (self.recent_menu, self.known_menu, self.top.menu)
        for menu in menus:
            menu.clear()
        for p in self.settings.recent_models:
            for menu in (self.recent_menu, self.top.menu):
                menu.addAction(Path(p).name, lambda p=p: self.loader.open_path(p)).setToolTip(p)
        self.recent_menu.setEnabled(bool(self.settings.recent_models))
        self.top.menu.addSeparator()
        self.top.menu.addAction("Open a .gguf file…", self.open_file_dialog)
        for name, label, blurb in KNOWN_MODELS:
            path = cached_path(name)
            self.chat.welcome.set_cached(name, str(path) if path else None)
            act = (lambda p=str(path): self.loader.open_path(p)) if path else (lambda n=name: self.loader.pull(n))
            text = f"{label} ({'downloaded' if path else 'download ' + blurb.split(',')[0]})"
            self.known_menu.addAction(text, act)
            self.top.menu.addAction(text, act)

    # ---------------------------------------------------------------- engine
    def _start_engine(self) -> None:
        last = self.settings.last_model
        if last and Path(last).is_file():
            self._pending_load = (last, self.settings.load_fields())
        self.bridge.start()

    def load_when_ready(self, path: str) -> None:
        """Load path with the settings' load options as soon as the engine is up (now, if it is idle)."""
        if self.bridge.state is P.EngineState.IDLE and self.loader.loading_path is None:
            self.loader.load(path, self.settings.load_fields())
        else:
            self._pending_load = (path, self.settings.load_fields())

    def restart_engine(self) -> None:
        self.chat.banner.hide()
        self.status.set_engine("starting")
        self.bridge.restart(reload=True)

    def _state_changed(self, state: str, detail: str) -> None:
        self.status.set_engine(state, detail)
        if state == P.EngineState.IDLE.value:
            self.chat.banner.hide()
            if self._pending_load is not None:
                path, fields = self._pending_load
                self._pending_load = None
                self.loader.load(path, fields)
        elif state == P.EngineState.LOADING.value:
            self.chat.banner.hide()

    def _crashed(self, detail: str, code, signal_name) -> None:
        self.status.set_engine("crashed")
        self.chat.banner.show_message(f"The engine stopped: {detail}. Your conversation is kept; restart the "
                                      f"engine to go on.")

    def _model_loaded(self, ev) -> None:
        self.model = ev
        self.top.set_model(ev.path, ev.n_ctx, ev.options)
        self.chat.show_welcome(False)
        self.status.set_context(0, ev.n_ctx)
        self.dock.set_load_s(ev.load_s)
        self.server_dock.set_model(ev.path, {"ctx": ev.n_ctx, **ev.options})
        if ev.warning:
            self.show_notice(ev.warning)
        self.settings.remember_model(ev.path)
        self.settings.save()
        self._refresh_models_menu()
        self.chat.input.setFocus()

    def _telemetry(self, ev) -> None:
        self.dock.graphs.add(ev)
        self.top.set_memory(ev.rss_bytes, ev.vram)
        if ev.kv_total:
            self.status.set_context(ev.kv_used, ev.kv_total)

    def _event(self, ev) -> None:
        if isinstance(ev, P.KVSnapshot):
            self.dock.set_kv(ev.snapshot)

    def _reply_started(self, _mid: str) -> None:
        self.kv_timer.start()
        if self.dock.isVisible():
            # the engine honours it at the reply's first token: the cell map shows the prompt's cells as
            # soon as it is in the cache, not a timer tick later (a short reply can end before the tick)
            self.bridge.send(P.Snapshot())

    def _ask_kv(self) -> None:
        if not self.controller.generating:
            self.kv_timer.stop()
        elif self.dock.isVisible():
            self.bridge.send(P.Snapshot())

    def _reply_finished(self, _mid: str, stats: dict) -> None:
        self.kv_timer.stop()
        if "n_eval" in stats:
            self.dock.set_n_eval(stats["n_eval"])
        if self.model is not None and stats.get("prompt_tokens") is not None:
            self.status.set_context(stats.get("prompt_tokens", 0) + stats.get("n_tokens", 0), self.model.n_ctx)
        if self.bridge.state is not P.EngineState.CRASHED:
            self.bridge.send(P.Snapshot())

    def _error(self, kind: str, message: str, request_id) -> None:
        if kind == P.ErrorKind.ENGINE_CRASHED.value and request_id is None and not self.chat.banner.isVisible():
            self.chat.banner.show_message(f"{message[:1].upper()}{message[1:]}.")
        elif request_id is not None and kind != P.ErrorKind.CANCELLED.value:
            self.status.showMessage(message, 10000)

    # ---------------------------------------------------------------- the local server
    def _server_settings_in(self) -> None:
        s, d = self.settings, self.server_dock
        d.port.setValue(s.server_port)
        d.parallel.setValue(s.server_parallel)
        d.network.setChecked(s.server_network)
        d.api_key.setText(s.server_api_key)

    def _server_settings_out(self) -> None:
        s, d = self.settings, self.server_dock
        s.server_port, s.server_parallel = d.port.value(), d.parallel.value()
        s.server_network, s.server_api_key = d.network.isChecked(), d.api_key.text()
        s.save()

    def _server_state(self, state: str, detail: str) -> None:
        if state == "running":
            self.status.set_server(f"serving {self.server.listen_url}/v1")
        elif state == "failed":
            self.status.set_server("")
            self.show_notice(f"The local server stopped: {detail}")
            self.server_dock.show()
            self.server_dock.raise_()
        else:
            self.status.set_server("server starting…" if state == "starting" else "")

    def _server_health(self, h: dict) -> None:
        from app.local_server import in_flight
        busy, waiting = in_flight(h)
        self.status.set_server(f"serving {self.server.listen_url}/v1 · {busy} in flight"
                               + (f", {waiting} waiting" if waiting else ""))

    # ---------------------------------------------------------------- actions
    def new_chat(self) -> None:
        self.controller.new_conversation()
        self.chat.show_welcome(self.model is None)
        self.chat.input.setFocus()

    def open_conversation(self, cid: str) -> None:
        """Past conversations can be read without a model; sending waits for one."""
        self.controller.open_conversation(cid)
        self.chat.stack.setCurrentWidget(self.chat.scroll)

    def show_notice(self, text: str) -> None:
        self.notice.show_message(text, "Dismiss")

    def open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a model", str(Path.home()), "GGUF models (*.gguf);;All files (*)")
        if path:
            self.loader.open_path(path)

    def open_settings(self) -> None:
        d = SettingsDialog(self.settings, self)
        if d.exec():
            self.apply_settings(d.result_settings(), confirm_reload=self._confirm_reload)

    def open_chat_settings(self) -> ChatSettingsDialog:
        """The shown conversation's system prompt and sampling; kept with it on OK."""
        prompt, sampling = self.controller.chat_settings()
        d = ChatSettingsDialog(prompt, sampling, self.controller.defaults(), self)
        cid = self.controller.conversation_id

        def accepted():
            if cid == self.controller.conversation_id:
                self.controller.set_chat_settings(d.system_prompt(), d.sampling())
        d.accepted.connect(accepted)
        d.finished.connect(lambda _r: d.deleteLater())
        self.chat_settings_dialog = d
        d.open()
        return d

    def _confirm_reload(self, changed: list[str]) -> bool:
        return QMessageBox.question(self, "Reload the model?",
                                    f"{', '.join(changed)} take effect when the model is loaded again. Reload now? "
                                    f"The conversation is kept.") == QMessageBox.StandardButton.Yes

    def apply_settings(self, new: AppSettings, confirm_reload=lambda changed: True) -> None:
        """Save new settings and apply them: theme and threads at once; load options by a reload,
        after confirm_reload(changed fields) says yes."""
        old = self.settings
        self.settings = new
        self._server_settings_out()
        self.controller.show_settings()
        if new.theme != old.theme:
            apply_theme(QApplication.instance(), new.theme)
        if new.threads != old.threads and new.threads:
            self.bridge.send(P.ApplySettings(threads=new.threads))
        changed = old.needs_reload(new)
        if changed and self.model is not None and confirm_reload(changed):
            self.loader.load(self.model.path, new.load_fields())

    # ---------------------------------------------------------------- drag and drop
    @staticmethod
    def _dropped_file(mime) -> str | None:
        urls = [u for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []
        return urls[0].toLocalFile() if urls else None

    def dragEnterEvent(self, e):
        if self._dropped_file(e.mimeData()):
            e.acceptProposedAction()
            self.overlay.show_over("Drop to preview")
        else:
            e.ignore()

    def dragLeaveEvent(self, e):
        self.overlay.hide()

    def dropEvent(self, e):
        self.overlay.hide()
        path = self._dropped_file(e.mimeData())
        if path:
            e.acceptProposedAction()
            self.loader.open_path(path)

    def resizeEvent(self, e):
        super().resizeEvent(e)
        if self.overlay.isVisible():
            self.overlay.setGeometry(self.rect())

    # ---------------------------------------------------------------- closing
    def closeEvent(self, e):
        window_state.save(self)
        self.server.stop_blocking()
        if self.controller.generating:
            self.controller.stop()
        super().closeEvent(e)
