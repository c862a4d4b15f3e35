"""GGUF reader: header, metadata, tensor table, and tensor bytes (mmap'd or private), with validation.

A GGUF file is untrusted input: every count and length is checked against the file size before
anything is allocated, and every problem is one BadModelFile / UnsupportedModel line.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import functools
import mmap as _mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import BadModelFile, UnsupportedModel
from engine.gguf_strings import StringArray, scan, string_array
from engine.quant import BLOCK, SUPPORTED, GGMLType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
_INT64_MAX = 2**63 - 1
_MAX_NESTED = 1 << 16        # arrays inside one metadata array (no known model stores more than a few)

# metadata value types: (name, struct format, numpy dtype)
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {
    _U8: ("<B", np.uint8), _I8: ("<b", np.int8), _U16: ("<H", np.uint16), _I16: ("<h", np.int16),
    _U32: ("<I", np.uint32), _I32: ("<i", np.int32), _F32: ("<f", np.float32), _BOOL: ("<?", np.bool_),
    _U64: ("<Q", np.uint64), _I64: ("<q", np.int64), _F64: ("<d", np.float64),
}
_TYPE_NAMES = {_U8: "uint8", _I8: "int8", _U16: "uint16", _I16: "int16", _U32: "uint32", _I32: "int32",
               _F32: "float32", _BOOL: "bool", _STR: "string", _ARR: "array", _U64: "uint64",
               _I64: "int64", _F64: "float64"}

# What well-known keys must hold: "str", "int", "float", "bool", "str[]", "int[]", "float[]", or
# "int|int[]" where some architectures store one value per layer.
_GENERAL_KEYS = {
    "general.architecture": "str", "general.name": "str", "general.alignment": "int",
    "general.file_type": "int", "general.quantization_version": "int",
    "tokenizer.ggml.model": "str", "tokenizer.ggml.pre": "str", "tokenizer.ggml.tokens": "str[]",
    "tokenizer.ggml.scores": "float[]", "tokenizer.ggml.token_type": "int[]",
    "tokenizer.ggml.merges": "str[]", "tokenizer.ggml.bos_token_id": "int",
    "tokenizer.ggml.eos_token_id": "int", "tokenizer.ggml.unknown_token_id": "int",
    "tokenizer.ggml.padding_token_id": "int", "tokenizer.ggml.eot_token_id": "int",
    "tokenizer.ggml.add_bos_token": "bool", "tokenizer.ggml.add_eos_token": "bool",
    "tokenizer.chat_template": "str",
}
_ARCH_KEYS = {
    "context_length": "int", "embedding_length": "int", "block_count": "int",
    "feed_forward_length": "int|int[]", "attention.head_count": "int|int[]",
    "attention.head_count_kv": "int|int[]", "attention.key_length": "int",
    "attention.value_length": "int", "attention.layer_norm_rms_epsilon": "float",
    "attention.sliding_window": "int", "rope.freq_base": "float", "rope.dimension_count": "int",
    "vocab_size": "int",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]      # torch order (outermost first)
    ne: tuple[int, ...]         # ggml order (innermost first)
    qtype: GGMLType
    offset: int                 # absolute offset in the file
    nbytes: int


def _one_line(text: str) -> str:
    """Escape anything unprintable (a corrupt file's names can hold newlines or control bytes)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _nm(name: str) -> str:
    """A tensor or key name as it may appear in a message: printable and not absurdly long."""
    name = _one_line(name)
    return name if len(name) <= 80 else name[:77] + "..."


def _q(key: str) -> str:
    return repr(_nm(key)) if key.isprintable() else "'" + _nm(key) + "'"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


# ---- page locking and residency ------------------------------------------------------------------
@dataclass(frozen=True)
class MlockReport:
    requested: bool
    locked: bool
    locked_bytes: int
    message: str


_PAGE = _mmap.PAGESIZE


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _page_span(buf: np.ndarray) -> tuple[int, int]:
    addr = buf.ctypes.data
    start = addr - addr % _PAGE
    return start, addr + buf.nbytes - start


def _memlock_limit() -> int | None:
    """RLIMIT_MEMLOCK after raising the soft limit to the hard one; None when unlimited or unknown."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def _mlock(addr: int, length: int) -> int:
    """mlock(2): 0 on success, else the errno (ENOSYS where libc has no mlock)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mlock"):
        return _errno.ENOSYS
    return 0 if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(length)) == 0 else ctypes.get_errno()


def lock_memory(buf: np.ndarray, what: str) -> MlockReport:
    """mlock a buffer, first raising RLIMIT_MEMLOCK to its hard limit; on refusal say why, never raise."""
    need = buf.nbytes
    limit = _memlock_limit()
    err = _mlock(*_page_span(buf))
    if err == 0:
        return MlockReport(True, True, need, f"locked {_mib(need)} of {what} in RAM")
    if err == _errno.ENOSYS:
        msg = "mlock is not available on this system; pages were not locked"
    elif limit is not None and err in (_errno.ENOMEM, _errno.EPERM, _errno.EAGAIN):
        msg = (f"mlock refused: RLIMIT_MEMLOCK is {_mib(limit)}, {what} needs {_mib(need)}; "
               f"raise it with `ulimit -l` (or memlock in /etc/security/limits.conf)")
    else:
        msg = f"mlock refused ({os.strerror(err)}) for {_mib(need)} of {what}; its pages may be swapped out"
    return MlockReport(True, False, 0, msg)


def resident_bytes_of(buf: np.ndarray) -> int:
    """Bytes of a buffer's pages that are in RAM now (mincore), or its size when that cannot be asked."""
    libc = _libc()
    if buf.nbytes == 0:
        return 0
    if libc is None or not hasattr(libc, "mincore"):
        return buf.nbytes
    addr, length = _page_span(buf)
    vec = np.zeros(-(-length // _PAGE), dtype=np.uint8)
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec.ctypes.data_as(ctypes.c_void_p)):
        return buf.nbytes
    return min(int(np.count_nonzero(vec & 1)) * _PAGE, buf.nbytes)


def describe_non_gguf(head: bytes) -> str:
    """A few words on what a file that is not GGUF looks like, from its first bytes."""
    if not head:
        return "an empty file"
    if head[:4] == b"FUGG":
        return "a big-endian GGUF, which Cellar does not read"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"ggml", b"ggmf", b"ggjt"):
        return "an old GGML/GGJT model from before GGUF; convert it to GGUF with llama.cpp"
    if head[:2] == b"PK":
        return "starts with 'PK', a zip archive (a PyTorch checkpoint or a download still zipped?)"
    if head[:4] == b"\x89HDF":
        return "an HDF5 file"
    if head[:2] in (b"\x1f\x8b",):
        return "a gzip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32:
        return "a safetensors file"
    lowered = head.lstrip()[:32].lower()
    if lowered.startswith((b"<!doctype", b"<html")):
        return "an HTML page (a download that saved an error page?)"
    if lowered.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model itself"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return f"starts with bytes {head[:4].hex(' ')}"


class _Parser:
    """Reads little-endian GGUF fields from a buffer with bounds checks against the file size."""

    def __init__(self, buf, size: int, path: Path):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, what: str) -> BadModelFile:
        return BadModelFile(_one_line(f"{self.path.name}: {what}; the file is corrupt or not a complete GGUF model"))

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated while reading {what} at byte {self.pos} (file is {self.size} bytes)")

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        if n > self.size - self.pos:
            raise self.fail(f"{what} claims {n} bytes, more than the {self.size - self.pos} left in the file")
        s = self.buf[self.pos:self.pos + n].decode("utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            fmt, dt = _SCALAR[vtype]
            return self.unpack(fmt, np.dtype(dt).itemsize, f"the value of {_q(key)}")
        if vtype == _STR:
            return self.string(f"the value of {_q(key)}")
        if vtype == _ARR:
            if depth > 8:
                raise self.fail(f"metadata {_q(key)} nests arrays more than 8 deep")
            etype = self.u32(f"the element type of {_q(key)}")
            n = self.u64(f"the length of {_q(key)}")
            return self.array(etype, n, key, depth)
        raise self.fail(f"metadata {_q(key)} has unknown value type {vtype}")

    def array(self, etype: int, n: int, key: str, depth: int) -> Any:
        left = self.size - self.pos
        if etype in _SCALAR:
            dt = np.dtype(_SCALAR[etype][1]).newbyteorder("<")
            if n * dt.itemsize > left:
                raise self.fail(f"array {_q(key)} claims {n} elements, more than the file could hold")
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
            self.pos += n * dt.itemsize
            return arr.astype(arr.dtype.newbyteorder("="), copy=False)
        if etype == _STR:
            if n * 8 > left:
                raise self.fail(f"array {_q(key)} claims {n} strings, more than the file could hold")
            return self.strings(n, key)
        if etype == _ARR:
            if n * 12 > left:
                raise self.fail(f"array {_q(key)} claims {n} arrays, more than the file could hold")
            if n > _MAX_NESTED:     # each costs a Python object ~10x its 12 bytes: bound the blow-up
                raise self.fail(f"array {_q(key)} holds {n} arrays; Cellar reads at most {_MAX_NESTED}")
            return [self.value(_ARR, key, depth + 1) for _ in range(n)]
        raise self.fail(f"array {_q(key)} has unknown element type {etype}")

    def strings(self, n: int, key: str) -> StringArray:
        # one scan for offsets; the bytes are decoded when asked (a 262144-token vocabulary: ~25 ms)
        start = self.pos
        found = scan(self.buf, start, n, self.size)
        if found is None:
            raise self._bad_string(n, key)
        offs, self.pos = found
        return string_array(self.buf, start, offs, self.pos)

    def _bad_string(self, n: int, key: str) -> BadModelFile:
        """The error for a string array that runs past the end of the file: which element, and how."""
        buf, pos, size = self.buf, self.pos, self.size
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                return self.fail(f"truncated inside string array {_q(key)} (element {i} of {n})")
            (ln,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
            if ln > size - pos:
                self.pos = pos
                return self.fail(f"string {i} of {_q(key)} claims {ln} bytes, more than the file holds")
            pos += ln
        return self.fail(f"string array {_q(key)} runs past the end of the file")


def _kind_of(v: Any) -> str:
    if isinstance(v, bool) or (isinstance(v, np.ndarray) and v.dtype == np.bool_):
        base = "bool"
    elif isinstance(v, str):
        return "str"
    elif isinstance(v, int) or (isinstance(v, np.ndarray) and v.dtype.kind in "iu"):
        base = "int"
    elif isinstance(v, float) or (isinstance(v, np.ndarray) and v.dtype.kind == "f"):
        base = "float"
    elif isinstance(v, StringArray):
        return "str[]"
    elif isinstance(v, list):
        return "str[]" if all(isinstance(x, str) for x in v) else "list"
    else:
        return type(v).__name__
    return base + "[]" if isinstance(v, np.ndarray) else base


def _check_key_types(path: Path, meta: dict[str, Any], vtypes: dict[str, int]) -> None:
    arch = meta.get("general.architecture")
    expected = dict(_GENERAL_KEYS)
    if isinstance(arch, str):
        expected.update({f"{arch}.{k}": t for k, t in _ARCH_KEYS.items()})
    for key, want in expected.items():
        if key not in meta:
            continue
        have = _kind_of(meta[key])
        if have in want.split("|") or (want == "float" and have == "int") or (have == "list" and not meta[key]):
            continue
        raise BadModelFile(f"{path.name}: metadata {_q(key)} should be {want.replace('|', ' or ')} but is "
                           f"{_TYPE_NAMES.get(vtypes[key], have)}; the file is corrupt or was written wrongly")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None:
        for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            if key in meta and len(meta[key]) != len(tokens):
                raise BadModelFile(f"{path.name}: {_q(key)} has {len(meta[key])} entries but the vocabulary "
                                   f"has {len(tokens)} tokens; the file is corrupt")


def _check_tensor_type(path: Path, name: str, raw: int) -> GGMLType:
    try:
        qtype = GGMLType(raw)
    except ValueError:
        raise UnsupportedModel(_one_line(f"{path.name}: tensor {_nm(name)} uses ggml type {raw}, which Cellar "
                                         f"does not know; use a Q4_K_M/Q8_0/F16 file")) from None
    if qtype not in SUPPORTED:
        raise UnsupportedModel(_one_line(f"{path.name}: tensor {_nm(name)} uses {qtype.name}, which Cellar "
                                         f"does not support yet; use a Q4_K_M/Q8_0/F16 file"))
    return qtype


class GGUFFile:
    """An open GGUF model: metadata, tensor table, and (unless read_data=False) its tensor bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.version = 0
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        self.file_size = 0
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.mlock_report: MlockReport | None = None
        self.mmapped = False
        self._map: _mmap.mmap | None = None
        self._data: np.ndarray | None = None   # whole file (mmap) or data section (private)
        self._data_base = 0                      # file offset of self._data[0]

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, *, mmap: bool = True, mlock: bool = False, read_data: bool = True,
             populate: bool = False) -> "GGUFFile":
        """populate (with mmap and read_data): map every page of the file now (MAP_POPULATE, as llama.cpp
        maps a model), so the weights are resident from the load on instead of faulted in by the first
        prompt; from the page cache this takes ~10 ms per 100 MB."""
        g = cls(Path(path))
        try:
            f = open(g.path, "rb")
        except FileNotFoundError:
            raise BadModelFile(f"{g.path}: no such file; check the path or run `cellar pull`") from None
        except IsADirectoryError:
            raise BadModelFile(f"{g.path}: is a directory, not a .gguf file") from None
        except OSError as e:
            raise BadModelFile(f"{g.path}: cannot be read ({e.strerror}); check its permissions") from None
        with f:
            g.file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if head[:4] != GGUF_MAGIC:
                raise BadModelFile(f"{g.path.name}: not a GGUF model: {describe_non_gguf(head + f.read(56))}")
            if g.file_size < 24:
                raise BadModelFile(f"{g.path.name}: truncated inside the GGUF header (file is {g.file_size} "
                                   f"bytes); download it again")
            if populate and read_data and mmap and hasattr(_mmap, "MAP_POPULATE"):
                mm = _mmap.mmap(f.fileno(), 0, flags=_mmap.MAP_SHARED | _mmap.MAP_POPULATE, prot=_mmap.PROT_READ)
            else:
                mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            try:
                g._parse(mm)
            except BaseException:
                mm.close()
                raise
            if read_data and mmap:
                g._map, g.mmapped = mm, True
                g._data, g._data_base = np.frombuffer(mm, dtype=np.uint8), 0
            else:
                mm.close()
                if read_data:
                    g._read_private(f)
        if read_data and mlock:
            g.mlock_report = lock_memory(g._data, "the model")
        return g

    def _read_private(self, f) -> None:
        n = self.file_size - self.data_offset
        buf = np.empty(max(n, 0), dtype=np.uint8)
        f.seek(self.data_offset)
        view, got = memoryview(buf), 0
        while got < n:
            k = f.readinto(view[got:])
            if not k:
                raise BadModelFile(f"{self.path.name}: file shrank while it was being read; try again")
            got += k
        self._data, self._data_base = buf, self.data_offset

    def _parse(self, buf) -> None:
        p = _Parser(buf, self.file_size, self.path)
        p.pos = 4
        version = p.u32("the version")
        if version not in (2, 3):
            if version == 1:
                raise BadModelFile(f"{self.path.name}: GGUF version 1 is too old for Cellar; "
                                   f"convert the model again with a current llama.cpp")
            if version & 0xFFFF == 0 and version >> 16:
                raise BadModelFile(f"{self.path.name}: a big-endian GGUF, which Cellar does not read")
            raise BadModelFile(f"{self.path.name}: unknown GGUF version {version} (Cellar reads 2 and 3); "
                               f"the file is corrupt or from a newer format")
        self.version = version
        n_tensors = p.u64("the tensor count")
        n_kv = p.u64("the metadata count")
        left = self.file_size - p.pos
        if n_kv * 13 > left:
            raise p.fail(f"header claims {n_kv} metadata entries, more than a {self.file_size}-byte file holds")
        if n_tensors * 28 > left:
            raise p.fail(f"header claims {n_tensors} tensors, more than a {self.file_size}-byte file holds")

        meta, vtypes = self.metadata, self.metadata_types
        for i in range(n_kv):
            key = p.string(f"metadata key {i}")
            if key in meta:
                raise p.fail(f"metadata key {_q(key)} appears twice")
            vtype = p.u32(f"the type of {_q(key)}")
            vtypes[key] = vtype
            meta[key] = p.value(vtype, key)
        _check_key_types(self.path, meta, vtypes)

        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise p.fail(f"general.alignment is {align}, not a power of two")
        self.alignment = align

        raw_infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = p.string(f"tensor name {i}")
            if name in names:
                raise p.fail(f"tensor {_nm(name)} appears twice")
            names.add(name)
            n_dims = p.u32(f"the dimension count of {_nm(name)}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise p.fail(f"tensor {_nm(name)} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = tuple(p.u64(f"the dimensions of {_nm(name)}") for _ in range(n_dims))
            raw_type = p.u32(f"the type of {_nm(name)}")
            offset = p.u64(f"the data offset of {_nm(name)}")
            raw_infos.append((name, ne, raw_type, offset))
        self.data_offset = -(-p.pos // align) * align

        for name, ne, raw_type, offset in raw_infos:
            self.tensors[name] = self._tensor_info(p, name, ne, raw_type, offset)
        self._check_overlap(p)

    def _tensor_info(self, p: _Parser, name: str, ne: tuple[int, ...], raw_type: int, offset: int) -> TensorInfo:
        if any(d == 0 for d in ne):
            raise p.fail(f"tensor {_nm(name)} has a zero-sized dimension {list(ne)}")
        if any(d > _INT64_MAX for d in ne) or prod(ne) > _INT64_MAX:
            raise p.fail(f"tensor {_nm(name)} dimensions {list(ne)} overflow")
        qtype = _check_tensor_type(self.path, name, raw_type)
        block, block_bytes = BLOCK[qtype]
        if ne[0] % block:
            raise p.fail(f"tensor {_nm(name)} rows of {ne[0]} are not a whole number of "
                         f"{qtype.name} blocks of {block}")
        nbytes = ne[0] // block * block_bytes * prod(ne[1:])
        if offset % self.alignment:
            raise p.fail(f"tensor {_nm(name)} data offset {offset} is not aligned to {self.alignment}")
        start = self.data_offset + offset
        if start > self.file_size or nbytes > self.file_size - start:
            raise p.fail(f"tensor {_nm(name)} data ({_mib(nbytes)} at byte {start}) runs past the end of the "
                         f"{self.file_size}-byte file; it is truncated")
        return TensorInfo(name, tuple(reversed(ne)), ne, qtype, start, nbytes)

    def _check_overlap(self, p: _Parser) -> None:
        prev = None
        for t in sorted(self.tensors.values(), key=lambda t: t.offset):
            if prev is not None and t.offset < prev.offset + prev.nbytes:
                raise p.fail(f"tensors {_nm(prev.name)} and {_nm(t.name)} overlap in the file")
            prev = t

    # ---- access --------------------------------------------------------------------------------
    def tensor_data(self, name: str) -> np.ndarray:
        """Raw GGUF block bytes of a tensor: uint8, 1-D; a zero-copy read-only view when mmapped."""
        t = self.tensors[name]
        if self._data is None:
            raise ValueError(f"{self.path.name} was opened without its tensor data (read_data=False)")
        start = t.offset - self._data_base
        return self._data[start:start + t.nbytes]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise BadModelFile(f"{self.path.name}: metadata key {_q(key)} is missing; "
                               f"the file is incomplete or not a model Cellar can run")
        return self.metadata[key]

    @property
    def arch(self) -> str:
        return self.require("general.architecture")

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def resident_bytes(self) -> int:
        """Bytes of the tensor data currently in RAM (page cache pages mapped in, or private memory)."""
        return 0 if self._data is None else resident_bytes_of(self._data)

    def close(self) -> None:
        self._data = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass   # tensor views are still alive; the mapping goes when the last one does
            self._map = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({self.path.name!r}, v{self.version}, {len(self.tensors)} tensors, {len(self.metadata)} keys)"
