"""The Local server switch with the real `cellar serve` and SmolLM2: it listens on loopback, the
panel counts a request while it is answered, and the switch stops the process."""
from __future__ import annotations

import json
import os
import threading
import urllib.request

import pytest

pytest.importorskip("engine.server")
pytestmark = pytest.mark.slow


def test_real_server_serves_counts_a_request_and_stops(qtbot, window, smollm2_path):
    p, server = window.server_dock, window.server
    p.set_model(str(smollm2_path), {"ctx": 512, "kv_type": "f16"})
    p.port.setValue(0)
    p.parallel.setValue(2)
    with qtbot.waitSignal(server.stateChanged, timeout=180000, check_params_cb=lambda s, d: s == "running"):
        p.switch.setChecked(True)
    base = p.url.text()
    assert base.startswith("http://127.0.0.1:") and base.endswith("/v1")
    qtbot.waitUntil(lambda: "0 requests in flight" in p.status.text(), timeout=10000)

    answer = {}

    def ask():
        body = json.dumps({"messages": [{"role": "user", "content": "Write a long story about a cellar."}],
                           "max_tokens": 200, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            answer.update(json.loads(r.read()))
    t = threading.Thread(target=ask, daemon=True)
    t.start()
    qtbot.waitUntil(lambda: "1 request in flight" in p.status.text(), timeout=60000)
    t.join(300)
    assert answer["choices"][0]["message"]["content"].strip()
    qtbot.waitUntil(lambda: "0 requests in flight" in p.status.text(), timeout=10000)

    pid = server.proc.processId()
    with qtbot.waitSignal(server.stateChanged, timeout=15000, check_params_cb=lambda s, d: s == "off"):
        p.switch.setChecked(False)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
