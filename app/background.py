"""Run a function on a short-lived thread and get its result back on the GUI thread."""
from __future__ import annotations

import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, Signal


class _Relay(QObject):
    done = Signal(object, object)          # result, exception


_live: set[_Relay] = set()                 # relays waiting for their thread


def run_in_thread(fn: Callable[[], Any], on_result: Callable[[Any], None],
                  on_error: Callable[[BaseException], None] | None = None) -> None:
    """fn() runs off the GUI thread; on_result(value) or on_error(exc) is called on the GUI thread."""
    relay = _Relay()
    _live.add(relay)

    def finish(result, exc):
        _live.discard(relay)
        relay.deleteLater()
        if exc is None:
            on_result(result)
        elif on_error is not None:
            on_error(exc)

    relay.done.connect(finish, Qt.ConnectionType.QueuedConnection)

    def work():
        try:
            relay.done.emit(fn(), None)
        except BaseException as e:          # handed to the GUI thread, never lost
            relay.done.emit(None, e)

    threading.Thread(target=work, name="cellar-bg", daemon=True).start()
