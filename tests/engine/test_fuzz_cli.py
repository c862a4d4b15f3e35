"""`cellar inspect` and `cellar run` on broken files from the fuzz corpus: one `error:` line on stderr,
nothing on stdout, exit status 2, no traceback (the commands run as a person runs them, in a subprocess)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "fuzz_corpus"
ROOT = Path(__file__).resolve().parents[2]


def cellar(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.launcher", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(r: subprocess.CompletedProcess, name: str, phrase: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and phrase in lines[0], (name, lines)
    assert r.stdout == "", (name, r.stdout[:500])


# Refused from the header alone: inspect (no torch) says so as plainly as run.
INSPECT = {"block_count_2e64": "block_count", "layer_index_1e12": "layer 999999999999",
           "context_length_2e62": "context_length", "offsets_overlap": "overlap",
           "duplicate_tensor": "appears twice", "token_count_lies": "claims", "n_dims_5": "5 dimensions",
           "kv_count_2e64": "metadata entries", "data_shorter_than_type": "runs past the end",
           "unknown_tensor_type": "ggml type 99"}
# Refused when the model is built: shapes against hyperparameters, vocabulary, architecture.
RUN = {"tensor_swapped_shapes": "has shape", "vocab_byte_token_bad_text": "byte token",
       "unknown_arch": "not supported"}


@pytest.mark.parametrize("name", sorted(INSPECT))
def test_inspect_bad_file(name):
    assert_one_error_line(cellar("inspect", str(CORPUS / f"{name}.gguf")), name, INSPECT[name])


@pytest.mark.slow
def test_run_bad_files():
    for name, phrase in RUN.items():
        r = cellar("run", str(CORPUS / f"{name}.gguf"), "-p", "hi", "-n", "2")
        assert_one_error_line(r, name, phrase)


@pytest.mark.slow
def test_cut_real_header(tmp_path, smollm2_path):
    """The first 64 KB of a real model (an interrupted download)."""
    cut = tmp_path / "partial.gguf"
    with open(smollm2_path, "rb") as f:
        cut.write_bytes(f.read(64 << 10))
    for cmd in ("inspect", "run"):
        args = (cmd, str(cut)) if cmd == "inspect" else (cmd, str(cut), "-p", "hi")
        assert_one_error_line(cellar(*args), f"{cmd} partial", "not a complete GGUF")
