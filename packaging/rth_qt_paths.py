"""Run-time hook of the bundle, in place of PyInstaller's PySide6 hook.

PyInstaller's hook imports PySide6.QtCore at start-up to register a qt.conf, which puts Qt and ICU
(~40 MiB) into every process, the command line and the engine worker included. The PySide6 wheel
registers its own qt.conf from where the package lies (inside the bundle, since the layout mirrors
site-packages), so all that is left to do is to point Qt at the bundled plugins.
"""
import os
import sys

os.environ["QT_PLUGIN_PATH"] = os.path.join(sys._MEIPASS, "PySide6", "Qt", "plugins")
