"""Fuzzing the GGUF reader and the whole load path (tests/fuzzgguf.py): every mutated, truncated or lying
file loads and runs a token, or ends in one engine.errors line, in bounded time and memory.

The hypothesis runs are derandomized (the same cases on every run, ~60 s in all); tools/fuzz_gguf.py N
runs longer random campaigns. All cases run under an address-space cap (RLIMIT_AS = current size +
2 GiB): a header that talks the loader into a multi-GB buffer fails the case instead of taking the RAM.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzgguf import (AddressSpaceCap, Doc, Finding, mutate, mutate_bytes, run_case, section_boundaries,
                            seed_docs)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "fuzz_corpus"
MAX_CASE_S = 5.0                 # slowest tiny case seen: ~0.2 s
MAX_CASE_RSS = 128 << 20         # largest tiny case seen: ~10 MiB of peak RSS growth
def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    docs = seed_docs(folder)
    for name, d in docs.items():                # warm up: the first load pays torch's one-time costs
        run_case(d.write(folder / f"warm_{name}.gguf"))
    return docs


@pytest.fixture(scope="module")
def capped():
    with AddressSpaceCap(2 << 30) as cap:
        yield cap


@pytest.fixture(scope="module")
def stats():
    s = {"cases": 0, "slowest": (0.0, ""), "largest": (0, ""), "outcomes": {}}
    yield s
    print(f"\nfuzz: {s['cases']} cases, outcomes {s['outcomes']}, slowest {s['slowest'][0]:.3f} s "
          f"({s['slowest'][1]}), largest RSS growth {s['largest'][0] / 2**20:.1f} MiB ({s['largest'][1]})")


def check(path: Path, what: str, stats: dict, *, load: bool = True, max_s: float = MAX_CASE_S,
          max_rss: int = MAX_CASE_RSS):
    try:
        case = run_case(path, load=load)
    except Finding as f:
        raise AssertionError(f"{what}: {f}") from f.__cause__
    stats["cases"] += 1
    stats["outcomes"][case.outcome] = stats["outcomes"].get(case.outcome, 0) + 1
    if case.seconds > stats["slowest"][0]:
        stats["slowest"] = (case.seconds, what)
    if case.rss_growth > stats["largest"][0]:
        stats["largest"] = (case.rss_growth, what)
    assert case.seconds < max_s, f"{what}: took {case.seconds:.2f} s"
    assert case.rss_growth < max_rss, f"{what}: peak RSS grew {case.rss_growth / 2**20:.0f} MiB"
    return case


TINY = ["llama_f32", "llama_q8", "llama_q4k", "gemma3", "llama_bpe"]


@fuzz(500)
@given(seed=st.sampled_from(TINY), rng=st.randoms(use_true_random=False), n=st.integers(1, 3))
def test_semantic_lies_end_in_typed_errors(seeds, capped, stats, tmp_path, seed, rng, n):
    doc, what = mutate(seeds[seed], rng, n)
    check(doc.write(tmp_path / "case.gguf"), f"{seed}: {what}", stats)


@fuzz(250)
@given(seed=st.sampled_from(TINY), rng=st.randoms(use_true_random=False), n=st.integers(1, 8))
def test_byte_mutations_end_in_typed_errors(seeds, capped, stats, tmp_path, seed, rng, n):
    raw = seeds[seed].to_bytes()
    head = len(seeds[seed].header_bytes())
    path = tmp_path / "case.gguf"
    path.write_bytes(mutate_bytes(raw, rng, n, limit=head if rng.random() < 0.8 else None))
    check(path, f"{seed}: {n} byte edits", stats)


def test_truncation_at_every_section_boundary(seeds, capped, stats, tmp_path):
    """Cut at the start and end of every header field, key, value, tensor-table entry and tensor."""
    n = 0
    for name in ("llama_q8", "gemma3", "llama_bpe"):
        raw = seeds[name].to_bytes()
        for cut in section_boundaries(seeds[name]):
            path = tmp_path / "cut.gguf"
            path.write_bytes(raw[:cut])
            case = check(path, f"{name} cut at {cut}", stats)
            assert case.outcome == "bad_model_file", (name, cut, case)
            n += 1
    assert n > 150


@pytest.fixture(scope="module")
def real_docs(smollm2_path, gemma3_path):
    return {p: Doc.read(p, max_data=0) for p in (Path(smollm2_path), Path(gemma3_path))}


@pytest.mark.slow
def test_real_headers_cut_and_mutated(real_docs, capped, stats, tmp_path):
    """The real models' headers cut at every metadata boundary in their first 256 KB and at a sample of
    later ones (the vocabulary, the tensor table), and their first 256 KB with byte edits: all are
    truncated files, so all are refused."""
    rng = random.Random(0)
    for path, doc in real_docs.items():
        raw = doc.header_bytes()
        cuts = section_boundaries(doc)
        early = [c for c in cuts if c < 256 << 10]
        late = rng.sample([c for c in cuts if (256 << 10) <= c < len(raw)], 4)
        assert len(early) > 60
        for cut in early + late:
            p = tmp_path / "cut.gguf"
            p.write_bytes(raw[:cut])
            case = check(p, f"{path.name} cut at {cut}", stats, load=False, max_rss=256 << 20)
            assert case.outcome == "bad_model_file"
        for i in range(25):
            p = tmp_path / "bytes.gguf"
            p.write_bytes(mutate_bytes(raw[: 256 << 10], rng, 1 + i % 6))
            check(p, f"{path.name} head, byte edits #{i}", stats, load=False, max_rss=256 << 20)


@pytest.mark.slow
def test_real_metadata_with_lies_through_the_load_path(real_docs, capped, stats, tmp_path):
    """The real metadata and tensor table over zeroed (sparse) tensor data: unchanged it loads and runs a
    token; with lies (a fixed sample of the mutators) every case ends well."""
    rng = random.Random(3)
    outcomes = set()
    for path, doc in real_docs.items():
        case = check(doc.write(tmp_path / "real.gguf"), f"{path.name} as is", stats, max_s=60, max_rss=1 << 30)
        assert case.outcome == "ok" and case.stage == "token"
        for i in range(3):
            d, what = mutate(doc, rng, 1)
            case = check(d.write(tmp_path / "real.gguf"), f"{path.name}: {what}", stats, load=i == 0, max_s=60,
                         max_rss=1 << 30)
            outcomes.add(case.outcome)
    assert outcomes - {"ok"}, "no mutation was refused: the sample did not exercise the checks"


def test_lying_sizes_cost_no_memory(seeds, capped, stats, tmp_path):
    """Headers that claim huge sizes: each is refused in milliseconds with no RSS growth to speak of."""
    from tests.fuzzgguf import ARR, KV, STR, U64
    lies = {
        "block_count": lambda d: setattr(d.kv(f"{d.arch}.block_count"), "value", 2**40),
        "context_length": lambda d: setattr(d.kv(f"{d.arch}.context_length"), "value", 2**62),
        "tensor_count": lambda d: setattr(d, "n_tensors", 2**62),
        "token_count": lambda d: setattr(d.kv("tokenizer.ggml.tokens"), "value",
                                         (STR, d.kv("tokenizer.ggml.tokens").value[1], 2**61)),
        "nested_arrays": lambda d: d.kvs.append(KV("x.a", ARR, (ARR, [(U64, [])] * 70000))),
        "dims": lambda d: setattr(d.tensors[1], "ne", (2**31, 2**31)),
        "layer_index": lambda d: setattr(d.tensors[1], "name", "blk.4000000000.attn_q.weight"),
    }
    import copy
    for name, lie in lies.items():
        d = copy.deepcopy(seeds["llama_q8"])
        lie(d)
        case = check(d.write(tmp_path / "lie.gguf"), name, stats, max_s=1.0, max_rss=16 << 20)
        assert case.outcome == "bad_model_file", (name, case)


def test_regression_corpus(capped, stats):
    """Every file in tests/data/fuzz_corpus ends as its manifest says (kind and a phrase of the message)."""
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    files = sorted(CORPUS.glob("*.gguf"))
    assert len(files) == len(manifest) >= 40
    assert sum(f.stat().st_size for f in files) < 2 << 20
    for f in files:
        want = manifest[f.stem]
        case = check(f, f.name, stats)
        assert case.outcome == want["kind"] and want["match"] in case.error, (f.name, case)
