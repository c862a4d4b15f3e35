"""The "Local server" panel: a switch that serves the loaded model over an OpenAI-compatible API
(`cellar serve` in its own process), its URL to copy, the requests in flight, and who may connect:
this computer only, unless "allow network access" is ticked, which then needs an API key."""
from __future__ import annotations

import secrets

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QCheckBox, QDockWidget, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from app.local_server import LocalServer, ServeOptions, in_flight


class ServerPanel(QDockWidget):
    optionsChanged = Signal()                 # port, parallel, network or key edited (to save them)

    def __init__(self, server: LocalServer, parent=None):
        super().__init__("Local server", parent)
        self.setObjectName("server_dock")
        self.server = server
        self.model_path: str | None = None
        self.model_fields: dict = {}
        body = QWidget()
        lay = QVBoxLayout(body)
        self.switch = QCheckBox("Serve the loaded model")
        self.switch.setToolTip("Start `cellar serve` for the loaded model: an OpenAI-compatible API "
                               "(/v1/chat/completions, /v1/completions, /v1/models) in its own process. "
                               "It loads the model again; the weights' pages are shared, the KV cache is its own.")
        self.switch.toggled.connect(self._toggled)
        lay.addWidget(self.switch)
        form = QFormLayout()
        self.port = QSpinBox()
        self.port.setRange(0, 65535)
        self.port.setValue(8080)
        self.port.setSpecialValueText("any free")
        self.port.setToolTip("TCP port to listen on (any free: the system picks one)")
        self.parallel = QSpinBox()
        self.parallel.setRange(1, 16)
        self.parallel.setValue(2)
        self.parallel.setToolTip("Requests decoded together; each gets context / parallel tokens")
        form.addRow("Port", self.port)
        form.addRow("Parallel requests", self.parallel)
        lay.addLayout(form)
        self.network = QCheckBox("Allow network access")
        self.network.setToolTip("Listen on every network interface so other computers can connect. Off: only "
                                "programs on this computer can (127.0.0.1)")
        self.network.toggled.connect(self._network_toggled)
        lay.addWidget(self.network)
        key_row = QHBoxLayout()
        self.api_key = QLineEdit()
        self.api_key.setPlaceholderText("API key")
        self.api_key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.api_key.setToolTip("Clients send it as 'Authorization: Bearer KEY'; at least 8 characters")
        self.new_key = QPushButton("New key")
        self.new_key.setToolTip("Make a random key")
        self.new_key.clicked.connect(lambda: self.api_key.setText(secrets.token_urlsafe(18)))
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(self.new_key)
        lay.addLayout(key_row)
        url_row = QHBoxLayout()
        self.url = QLineEdit()
        self.url.setReadOnly(True)
        self.url.setPlaceholderText("not serving")
        self.url.setToolTip("The API's base URL, for OpenAI clients (base_url)")
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setToolTip("Copy the base URL")
        self.copy_btn.clicked.connect(self.copy_url)
        url_row.addWidget(self.url, 1)
        url_row.addWidget(self.copy_btn)
        lay.addLayout(url_row)
        self.status = QLabel("Off")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setToolTip("What the server is doing; requests in flight are being answered now, waiting "
                               "ones queue for a free slot")
        lay.addWidget(self.status)
        lay.addStretch(1)
        scroll = QScrollArea()                   # a narrow dock scrolls instead of widening the window
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)
        for sig in (self.port.valueChanged, self.parallel.valueChanged, self.network.toggled, self.api_key.textChanged):
            sig.connect(lambda *_: self.optionsChanged.emit())
        server.stateChanged.connect(self._state)
        server.health.connect(self._health)
        self._network_toggled(False)
        self.set_model(None)

    # ---------------------------------------------------------------- inputs
    def set_model(self, path: str | None, fields: dict | None = None) -> None:
        self.model_path, self.model_fields = path, dict(fields or {})
        self.switch.setEnabled(path is not None or self.switch.isChecked())
        if path is None and self.server.state == "off":
            self.status.setText("Load a model to serve it.")
        elif self.server.state == "off":
            self.status.setText("Off")

    def options(self) -> ServeOptions:
        f = self.model_fields
        return ServeOptions(self.model_path or "", self.port.value(), self.parallel.value(), self.network.isChecked(),
                            self.api_key.text(), int(f.get("ctx", 4096)), str(f.get("kv_type", "f16")))

    def _network_toggled(self, on: bool) -> None:
        self.api_key.setEnabled(on)
        self.new_key.setEnabled(on)

    def _toggled(self, on: bool) -> None:
        editable = (self.port, self.parallel, self.network, self.api_key, self.new_key)
        if on:
            if self.model_path is None:
                self.switch.setChecked(False)
                return
            for w in editable:
                w.setEnabled(False)
            if not self.server.start(self.options()):
                self.switch.setChecked(False)
        else:
            self.server.stop()
            for w in editable[:3]:
                w.setEnabled(True)
            self._network_toggled(self.network.isChecked())

    def copy_url(self) -> None:
        if self.url.text():
            QGuiApplication.clipboard().setText(self.url.text())

    # ---------------------------------------------------------------- what the server says
    def _state(self, state: str, detail: str) -> None:
        if state == "running":
            base = f"{self.server.listen_url}/v1"
            self.url.setText(base)
            who = "other computers too (API key required)" if self.server.options.network else "this computer only"
            self.status.setText(f"Listening · {who} · 0 requests in flight")
        elif state == "starting":
            self.status.setText("Starting: loading the model in the server process…")
        elif state == "stopping":
            self.status.setText("Stopping…")
        else:
            self.url.clear()
            self.status.setText(detail if state == "failed" else "Off")
            if self.switch.isChecked():
                self.switch.blockSignals(True)
                self.switch.setChecked(False)
                self.switch.blockSignals(False)
                self._toggled(False)
            self.switch.setEnabled(self.model_path is not None)

    def _health(self, h: dict) -> None:
        busy, waiting = in_flight(h)
        who = "other computers too (API key required)" if self.server.options.network else "this computer only"
        model = f" · {h['model']}" if h.get("model") else ""
        text = f"Listening{model} · {who} · {busy} request{'' if busy == 1 else 's'} in flight"
        if waiting:
            text += f" · {waiting} waiting"
        self.status.setText(text)
