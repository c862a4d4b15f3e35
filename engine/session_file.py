"""The session file container: a fixed preamble, a JSON header, a safetensors payload, one checksum.

    offset  size  field
    0       8     magic b"CELLARSN"
    8       4     format version (u32 little-endian)
    12      4     flags (u32, 0)
    16      8     header length in bytes (u64)
    24      8     payload length in bytes (u64)
    32      32    sha256 over header bytes + payload bytes
    64      ...   header: UTF-8 JSON object
    ...     ...   payload: a safetensors blob (tensors only, no code)

A session file is untrusted input. Nothing is parsed before the lengths agree with the file size and
the checksum matches, so a truncated or altered file is refused before any of it is used; JSON and
safetensors are the only parsers that ever see its bytes (never pickle). Writes go to a temporary
file in the same folder, are fsync'd, then renamed over the target: a crash or a full disk mid-save
leaves the previous session as it was.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from glob import escape as glob_escape
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from engine.errors import BadSessionFile, CellarError

MAGIC = b"CELLARSN"
VERSION = 1
PREAMBLE = struct.Struct("<8sIIQQ32s")          # 64 bytes
MAX_HEADER = 64 << 20                           # a header holds tokens' bookkeeping and the chat text
_CHUNK = 8 << 20


def _fail(path: Path, what: str) -> BadSessionFile:
    return BadSessionFile(f"{path.name}: {what}")


# ---------------------------------------------------------------- writing

def _write(fd: int, data) -> None:
    """Write all of `data` to fd (the one place bytes hit the disk; tests patch it)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:_CHUNK])
        view = view[n:]


def _describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device; free some space and save again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not allowed to write there; pick another folder"
    if e.errno == errno.ENOENT:
        return "the folder does not exist"
    return (e.strerror or str(e)).lower()


def write_session_file(path, header: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Write atomically; returns the file size. Raises CellarError (one line) when the disk refuses."""
    path = Path(path)
    try:
        head = json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise CellarError(f"cannot save the session: its data is not plain JSON ({e})") from None
    if len(head) > MAX_HEADER:
        raise CellarError(f"cannot save the session: its header is {len(head)} bytes, more than "
                          f"{MAX_HEADER}; the conversation text is too long to keep")
    payload = st_save({k: v.contiguous() for k, v in tensors.items()})
    digest = hashlib.sha256(head)
    digest.update(payload)
    pre = PREAMBLE.pack(MAGIC, VERSION, 0, len(head), len(payload), digest.digest())
    folder = path.parent if str(path.parent) else Path(".")
    _clear_stale_temps(folder, path.name)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for part in (pre, head, payload):
            _write(fd, part)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        _fsync_dir(folder)
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        _unlink_quietly(tmp)
        raise CellarError(f"could not save the session to {path}: {_describe_os_error(e)}") from None
    except BaseException:
        if fd >= 0:
            os.close(fd)
        _unlink_quietly(tmp)
        raise
    return PREAMBLE.size + len(head) + len(payload)


def _clear_stale_temps(folder: Path, name: str) -> None:
    """Remove temp files a crashed save of `name` left behind (their process is gone)."""
    try:
        entries = list(folder.glob(f".{glob_escape(name)}.*.tmp"))
    except OSError:
        return
    for p in entries:
        pid = p.name[len(name) + 2:-4]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _unlink_quietly(p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


# ---------------------------------------------------------------- reading

def read_session_file(path, *, max_bytes: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and verify a session file: lengths, checksum, JSON header, safetensors payload.

    `max_bytes` bounds the file size (the largest session the loaded model could produce), so an
    absurd file is refused before it is read. Every problem is one BadSessionFile line."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadSessionFile(f"{path}: no such session file; check the path") from None
    except IsADirectoryError:
        raise BadSessionFile(f"{path}: is a folder, not a session file") from None
    except OSError as e:
        raise BadSessionFile(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(PREAMBLE.size)
        if not raw:
            raise _fail(path, "empty file; save the session again")
        if raw[:len(MAGIC)] != MAGIC[:len(raw)]:
            raise _fail(path, "not a Cellar session file (wrong magic bytes)")
        if len(raw) < PREAMBLE.size:
            raise _fail(path, f"truncated inside the preamble ({size} bytes); save the session again")
        _, version, flags, hlen, plen, want = PREAMBLE.unpack(raw)
        if version != VERSION:
            raise _fail(path, f"session format version {version}, this Cellar reads version {VERSION}")
        if flags != 0:
            raise _fail(path, f"unknown flags {flags:#x}; the file is corrupt or from a newer Cellar")
        if hlen > MAX_HEADER:
            raise _fail(path, f"header claims {hlen} bytes, more than the {MAX_HEADER} allowed; the file is corrupt")
        expect = PREAMBLE.size + hlen + plen
        if size < expect:
            raise _fail(path, f"truncated: {size} bytes, the preamble promises {expect}; save the session again")
        if size > expect:
            raise _fail(path, f"{size - expect} unexpected bytes after the payload; the file was altered")
        if max_bytes is not None and size > max_bytes:
            raise _fail(path, f"{size} bytes, more than any session of this model can hold ({max_bytes}); "
                              "the file is corrupt")
        body = bytearray(hlen + plen)
        view, got = memoryview(body), 0
        digest = hashlib.sha256()
        while got < len(body):
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                raise _fail(path, "file shrank while it was being read; try again")
            digest.update(view[got:got + n])
            got += n
    if digest.digest() != want:
        raise _fail(path, "checksum mismatch: the file was altered or damaged; it cannot be restored")
    try:
        header = json.loads(bytes(view[:hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"header is not valid JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise _fail(path, "header nests too deeply to be a session; the file is corrupt") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    try:
        tensors = st_load(bytes(view[hlen:])) if plen else {}
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise _fail(path, f"payload is not a valid tensor blob ({str(e).splitlines()[0][:200]})") from None
    return header, tensors
