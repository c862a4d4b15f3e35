"""Regenerate tests/data/tokenizer_corpus.json: llama.cpp's token ids for a fixed corpus, both models.

Run with a Python that has llama-cpp-python (the peer), not the project's venv:
    /tmp/llamacpp-peer/bin/python tools/make_tokenizer_refs.py [--smollm2 PATH] [--gemma3 PATH]
The project's tokenizer tests compare against the JSON this writes; it is committed, so the tests
need no peer. Only the vocabulary is loaded (vocab_only), so this takes a few seconds.

Other BPE pre-tokenizers are checked on SmolLM2's vocabulary with tokenizer.ggml.pre swapped: first
write those vocabulary-only files with the project's venv, then pass their folder to the peer run:
    .venv/bin/python tools/make_tokenizer_refs.py --write-variants /tmp/tokvariants
    /tmp/llamacpp-peer/bin/python tools/make_tokenizer_refs.py --variants /tmp/tokvariants

--cpu-init-stub: when the peer's ggml CPU backend was built for a wider ISA than this CPU (it dies with
SIGILL in ggml_cpu_init), re-run with that init preloaded as a no-op; loading a vocabulary and
tokenizing never touch the CPU backend's kernels or tables.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\r\n", "\t\t  \n",
    "Hello", "Hello world", " Hello world", "Hello world ", "  Hello   world  ", "hello\tworld",
    "line one\nline two\n\nline four\n", "a\n\n\nb", "a \n b", "tab\tseparated\tvalues\t",
    "trailing spaces   ", "   leading spaces", "many      spaces      here",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, they're here, we've won, I'll go, he'd say, don't",
    "I'M SURE IT'S FINE, THEY'RE HERE, WE'VE WON, I'LL GO, HE'D SAY, DON'T",
    "'s 't 're 've 'm 'll 'd", "rock'n'roll o'clock y'all", "\"quoted\" and 'single'",
    "café naïve résumé über straße façade", "Ünïcödé àccênts: ÀÉÎÕÜ ñ ç",
    "日本語のテキストです。", "中文分词测试：你好，世界！", "한국어 텍스트", "Привет, мир! Как дела?",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ελληνικά γράμματα", "ไทย ภาษา",
    "emoji 😀👍🏽🎉 and 👨‍👩‍👧‍👦 family", "🤖🦀🐍", "mixed English 日本語 русский 😀 ok",
    "def main():\n    x = [1, 2, 3]\n    for i in x:\n        print(i ** 2)\n    return None\n",
    "class Foo(Bar):\n\tdef __init__(self):\n\t\tself.a = {'k': \"v\"}\n",
    "if (a && b || !c) { return x->y[0] >= 10; }", "<div class=\"x\">text</div>",
    "import numpy as np  # comment\nnp.zeros((3, 4), dtype=np.float32)",
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159265358979",
    "1,000,000 and 2025-01-31 12:34:56", "phone 555-0100 x12", "v1.2.3-rc4",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "text<|im_end|>more", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>hello<eos>", "<s>inside</s>", "<table><tr><td>1</td></tr></table>", "<|im_start|",
    "!!! ??? ... ,,, ;;;", "a-b_c/d\\e|f~g^h", "$100 + 50% = ?", "@user #tag &amp; *bold*",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\u3000ideographic space", "e\u0301 combining",
    "ALLCAPS lowercase MiXeD", "a" * 40, "ab" * 25, "\U0001F600" * 3, "x\x00y", "\x7f\x01",
]

# strings also tokenized with add_special=True and with parse_special=False
SPECIAL_CASES = [
    "", "Hello world", "<|im_start|>user\nHi<|im_end|>", "<start_of_turn>user\nHi<end_of_turn>",
    "<bos>x<eos>", "<s>inside</s>", "a\n\nb  c",
]


PRE_VARIANTS = ("llama3", "qwen2", "gpt-2", "default", "starcoder")


def write_variants(src: str, out_dir: str) -> None:
    """SmolLM2's metadata with each tokenizer.ggml.pre of PRE_VARIANTS, no tensors (project venv)."""
    import gguf
    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine.gguf import GGUFFile
    from engine.gguf_strings import StringArray
    meta = GGUFFile.open(src, read_data=False).metadata
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for pre in PRE_VARIANTS:
        w = gguf.GGUFWriter(str(Path(out_dir) / f"smollm2-{pre}.gguf"), meta["general.architecture"])
        for k, v in meta.items():
            v = pre if k == "tokenizer.ggml.pre" else v
            if k in ("general.architecture", "general.alignment"):
                continue
            if isinstance(v, bool):
                w.add_bool(k, v)
            elif isinstance(v, int):
                w.add_uint32(k, v)
            elif isinstance(v, float):
                w.add_float32(k, v)
            elif isinstance(v, str):
                w.add_string(k, v)
            elif isinstance(v, (list, np.ndarray, StringArray)):
                w.add_array(k, v.tolist() if isinstance(v, np.ndarray) else list(v))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _peer(path: str):
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    return llm, vocab, llama_cpp


def _detok(lc, vocab, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    arr = (lc.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = lc.llama_detokenize(vocab, arr, len(ids), buf, cap, remove_special, unparse_special)
    assert 0 <= n <= cap, n
    return buf.raw[:n]


def _piece(lc, vocab, tid: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = lc.llama_token_to_piece(vocab, tid, buf, 256, 0, True)
    assert 0 <= n <= 256, n
    return buf.raw[:n]


def model_refs(path: str) -> dict:
    llm, vocab, lc = _peer(path)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    out: dict = {
        "n_vocab": n_vocab,
        "bos_id": lc.llama_vocab_bos(vocab), "eos_id": lc.llama_vocab_eos(vocab),
        "add_bos": bool(lc.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(lc.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [i for i in range(n_vocab) if lc.llama_vocab_is_eog(vocab, i)],
        "cases": [], "special_cases": [],
    }
    seen: set[int] = set()
    for text in CORPUS:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        seen.update(ids)
        out["cases"].append({
            "text": text, "ids": ids,
            "detok_hex": _detok(lc, vocab, ids, False, True).hex(),
            "detok_skip_hex": _detok(lc, vocab, ids, True, False).hex(),
        })
    for text in SPECIAL_CASES:
        out["special_cases"].append({
            "text": text,
            "ids_add_special": llm.tokenize(text.encode(), add_bos=True, special=True),
            "ids_no_parse": llm.tokenize(text.encode(), add_bos=False, special=False),
        })
    probe = sorted(seen | set(range(0, n_vocab, max(1, n_vocab // 3000))) | set(range(300)))
    out["pieces"] = {str(i): _piece(lc, vocab, i).hex() for i in probe}
    return out


def _reexec_with_stub() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cellar-tokref-"))
    (tmp / "stub.c").write_text("void ggml_cpu_init(void) {}\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp / "stub.so"), str(tmp / "stub.c")], check=True)
    env = dict(os.environ, LD_PRELOAD=str(tmp / "stub.so"))
    argv = [a for a in sys.argv if a != "--cpu-init-stub"]
    os.execve(sys.executable, [sys.executable, *argv], env)


def main() -> None:
    if "--cpu-init-stub" in sys.argv and "LD_PRELOAD" not in os.environ:
        _reexec_with_stub()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-init-stub", action="store_true", help="no-op ggml_cpu_init (see above)")
    ap.add_argument("--smollm2", default="/tmp/models/smollm2.gguf")
    ap.add_argument("--gemma3", default="/tmp/models/gemma3.gguf")
    ap.add_argument("--write-variants", metavar="DIR", help="write SmolLM2 pre-tokenizer variants and exit")
    ap.add_argument("--variants", metavar="DIR", help="folder of those variants: record their ids too")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/tokenizer_corpus.json"))
    args = ap.parse_args()
    if args.write_variants:
        write_variants(args.smollm2, args.write_variants)
        return
    data = {"source": "llama-cpp-python (llama.cpp) vocab_only tokenize/detokenize/token_to_piece",
            "models": {"smollm2": model_refs(args.smollm2), "gemma3": model_refs(args.gemma3)}}
    if args.variants:
        data["smollm2_pre_variants"] = {}
        for pre in PRE_VARIANTS:
            llm = _peer(str(Path(args.variants) / f"smollm2-{pre}.gguf"))[0]
            data["smollm2_pre_variants"][pre] = [llm.tokenize(t.encode(), add_bos=False, special=True)
                                                 for t in CORPUS]
    Path(args.out).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(CORPUS)} strings x 2 models")


if __name__ == "__main__":
    main()
