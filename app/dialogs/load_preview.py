"""Before a model loads: what it is, what it will cost in RAM and VRAM with the chosen context and GPU
layers (recomputed live as the sliders move), a verdict in words, and [Load] [Cancel].
Loading then shows its progress in place; the dialog closes when the model is ready."""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFormLayout, QGridLayout, QLabel, QProgressBar,
                               QSlider, QVBoxLayout, QWidget)

from app.background import run_in_thread
from app.dialogs.memory_bar import CONCERNS, TIPS, MemoryBar
from app.format import count, size
from app.model_files import ModelPreview, error_line, plan_json
from app.settings import AppSettings

VERDICT_COLOURS = {"fits": "#16a34a", "tight": "#d97706", "won't fit": "#dc2626"}
CTX_STEP = 256
RED = VERDICT_COLOURS["won't fit"]


def quant_mix_text(summary: dict) -> str:
    parts = []
    for name, q in summary.get("quant_mix", {}).items():
        parts.append(f"{name} {size(q['bytes'])} ({q['tensors']} tensors)")
    return " · ".join(parts)


class LoadPreviewDialog(QDialog):
    loadRequested = Signal(str, object)        # path, dict of protocol.Load fields (path aside)

    def __init__(self, preview: ModelPreview, settings: AppSettings, parent=None):
        super().__init__(parent)
        self.preview, self.settings = preview, settings
        s = preview.summary
        self.setWindowTitle(f"Load {preview.path.name}?")
        self.setMinimumWidth(560)
        lay = QVBoxLayout(self)

        head = QLabel(f"<b>{preview.path.name}</b><br>{s['name']}")
        head.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(head)
        form = QFormLayout()
        self.info = {}
        rows = [("Architecture", s["arch"], "general.architecture of the file"),
                ("Parameters", f"{count(s['parameters'])} ({s['bits_per_weight']:.2f} bits per weight)",
                 "Number of weights in all tensors; bits per weight: file bytes of the tensors × 8 / weights"),
                ("Quantization", quant_mix_text(s), "Bytes held in each tensor type, and how many tensors use it"),
                ("Layers", f"{s['layers']}" + (f" ({s['swa_layers']} with a {s['sliding_window']}-token sliding window)"
                                                if s.get("sliding_window") else ""),
                 "Repeating transformer blocks; sliding-window layers keep only the window's keys and values"),
                ("Trained context", f"{s['context_length']} tokens", "The longest context the model was trained on"),
                ("File size", size(s["file_size"]), "Bytes on disk")]
        for label, value, tip in rows:
            w = QLabel(value)
            w.setWordWrap(True)
            w.setToolTip(tip)
            self.info[label] = w
            form.addRow(label, w)
        lay.addLayout(form)

        grid = QGridLayout()
        self.bars = {"ram": MemoryBar("RAM"), "vram": MemoryBar("VRAM")}
        for row, (place, bar) in enumerate(self.bars.items()):
            grid.addWidget(QLabel(place.upper()), row, 0)
            grid.addWidget(bar, row, 1)
        lay.addLayout(grid)
        legend = QLabel(" &nbsp; ".join(f"<span style='color:{c}'>■</span> {k}" for k, c in CONCERNS))
        legend.setToolTip("\n".join(f"{k}: {t}" for k, t in TIPS.items()))
        lay.addWidget(legend)

        n_ctx_train = int(s["context_length"])
        top = max(n_ctx_train, CTX_STEP)
        self.ctx_slider = QSlider(Qt.Orientation.Horizontal)
        self.ctx_slider.setRange(1, max(1, top // CTX_STEP))
        self.ctx_slider.setValue(max(1, min(settings.ctx, top) // CTX_STEP))
        self.ctx_slider.setToolTip("Context length: the most tokens the conversation can hold (the KV cache "
                                   "is allocated for all of them at load)")
        self.ctx_label = QLabel()
        self.gpu_slider = QSlider(Qt.Orientation.Horizontal)
        self.gpu_slider.setRange(0, int(s["layers"]))
        self.gpu_slider.setValue(0)
        self.gpu_slider.setToolTip("Layers whose weights and KV cache go to the GPU (0: everything on the CPU)")
        self.gpu_label = QLabel()
        sl = QFormLayout()
        sl.addRow(self.ctx_label, self.ctx_slider)
        sl.addRow(self.gpu_label, self.gpu_slider)
        lay.addLayout(sl)

        self.verdict = QLabel("Working out the memory plan…")
        self.verdict.setWordWrap(True)
        self.verdict.setToolTip("Whether the plan fits in what is free now, with a safety margin")
        lay.addWidget(self.verdict)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.hide()
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        self.buttons = QDialogButtonBox()
        self.load_btn = self.buttons.addButton("Load", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.load_btn.clicked.connect(self._load)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)

        self.plan: dict | None = None
        self._planning = False
        self._again = False
        self.loading = False
        self._closed = False
        self._debounce = QTimer(self, singleShot=True, interval=60, timeout=self.replan)
        self.ctx_slider.valueChanged.connect(self._changed)
        self.gpu_slider.valueChanged.connect(self._changed)
        self._update_labels()
        self.replan()

    # ---------------------------------------------------------------- plan
    def plan_settings(self) -> dict:
        return {"ctx": self.ctx_slider.value() * CTX_STEP, "batch": self.settings.batch,
                "ubatch": min(self.settings.batch, 512), "kv_type": self.settings.kv_type,
                "gpu_layers": self.gpu_slider.value(), "mmap": self.settings.mmap, "mlock": self.settings.mlock}

    def _changed(self, _=None) -> None:
        self._update_labels()
        self._debounce.start()

    def _update_labels(self) -> None:
        self.ctx_label.setText(f"Context {self.ctx_slider.value() * CTX_STEP}")
        self.gpu_label.setText(f"GPU layers {self.gpu_slider.value()} / {self.gpu_slider.maximum()}")

    def replan(self) -> None:
        """Recompute the plan off the GUI thread; a change made meanwhile is planned right after."""
        if self._planning:
            self._again = True
            return
        self._planning = True
        wanted = self.plan_settings()
        run_in_thread(lambda: plan_json(self.preview, **wanted), self._planned, self._plan_failed)

    def _planned(self, plan: dict) -> None:
        self._planning = False
        if self._closed:
            self.preview.close()
            return
        if self._again:
            self._again = False
            self.replan()
        self.show_plan(plan)

    def _plan_failed(self, exc: BaseException) -> None:
        self._planning = False
        self.verdict.setText(error_line(exc))
        self.verdict.setStyleSheet(f"color: {RED};")

    def show_plan(self, plan: dict) -> None:
        self.plan = plan
        free = plan.get("free", {})
        self.bars["ram"].set_values(plan["ram"], free.get("ram"))
        self.bars["vram"].set_values(plan["vram"], free.get("vram"),
                                     "" if free.get("vram") is not None else "no NVIDIA GPU")
        no_gpu = free.get("vram") is None
        self.gpu_slider.setEnabled(not no_gpu and not self.loading)
        if no_gpu:
            self.gpu_slider.setToolTip("No NVIDIA GPU was found: every layer runs on the CPU")
        self.verdict.setText(self.verdict_text(plan))
        self.verdict.setStyleSheet(f"color: {VERDICT_COLOURS.get(plan['verdict'], '')}; font-weight: bold;")
        self.load_btn.setEnabled(not self.loading)

    @staticmethod
    def verdict_text(plan: dict) -> str:
        ram, free = plan["ram"]["total"], plan["free"]["ram"]
        rec = plan.get("recommendation", {})
        v = plan["verdict"]
        where = f"{size(ram)} of RAM, {size(free)} free now"
        if plan["vram"]["total"]:
            fv = plan["free"].get("vram")
            where += f"; {size(plan['vram']['total'])} of VRAM" + (f", {size(fv)} free" if fv is not None else "")
        if v == "fits":
            return f"Fits: needs {where}."
        if v == "tight":
            return f"Tight: needs {where}; little would be left for other programs."
        tips = []
        if rec.get("max_ctx"):
            tips.append(f"a context of {rec['max_ctx']} or less")
        if plan["vram"]["total"] and rec.get("max_gpu_layers", 0) < plan["settings"]["gpu_layers"]:
            tips.append(f"{rec.get('max_gpu_layers', 0)} GPU layers or fewer")
        extra = " ".join(plan.get("notes", [])[:1])
        return (f"Won't fit: needs {where}." + (f" Try {' and '.join(tips)}." if tips else
                                                 " Close other programs or pick a smaller model.")
                + (f" {extra}" if extra else ""))

    # ---------------------------------------------------------------- load
    def _load(self) -> None:
        fields = self.settings.load_fields()
        s = self.plan_settings()
        fields.update(ctx=s["ctx"], gpu_layers=s["gpu_layers"])
        self.loading = True
        self.load_btn.setEnabled(False)
        self.ctx_slider.setEnabled(False)
        self.gpu_slider.setEnabled(False)
        self.progress.setValue(0)
        self.progress.show()
        self.progress_label.setText("Starting…")
        self.progress_label.show()
        self.loadRequested.emit(str(self.preview.path), fields)

    def on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress_label.setText(message or f"{fraction:.0%}")

    def on_loaded(self) -> None:
        self.loading = False
        self.accept()

    def on_failed(self, message: str) -> None:
        self.loading = False
        self.progress.hide()
        self.progress_label.setText(message)
        self.progress_label.setStyleSheet(f"color: {RED};")
        self.load_btn.setEnabled(True)
        self.ctx_slider.setEnabled(True)

    def done(self, result: int) -> None:
        self._closed = True
        if not self._planning:                 # else closed when the running plan comes back
            self.preview.close()
        super().done(result)
