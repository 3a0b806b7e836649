"""Reading and writing files that may be hostile or may not fit: one bounded reader, one strict JSON loader.

Everything rnnexport reads from a path a user or an artifact names goes through :func:`read_bounded`:
it checks with ``lstat`` (never following a link) that the path is a regular file no larger than a
limit, opens it without following links and without blocking (a FIFO swapped in after the check
cannot hang the read), checks the open file again, and reads it once. Callers hash and parse those
same bytes, so a file that changes between "hash" and "parse" cannot slip through.

JSON documents (``--config``, ``manifest.json``, golden ``meta.json``, model metadata) go through
:func:`loads_strict`: duplicate keys, non-finite numbers (``NaN``, ``1e999``) and nesting beyond a
small depth are refused with a message instead of being taken silently or ending in a traceback.

Numpy archives (``--inputs``) go through :func:`load_npz`, which bounds what they decompress to
before decompressing anything.

Writes go through :func:`write_file`, which turns a full disk, a file-size limit or a too-long name
into one message. :func:`exchange` swaps two folders in one step where the operating system can.
Torch-free.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import math
import os
import platform
import re
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rnnexport.errors import ArtifactError, RnnExportError, UsageError
from rnnexport.limits import format_bytes

__all__ = [
    "MAX_JSON_DEPTH",
    "NAME_MAX",
    "PATH_MAX",
    "check_path",
    "copy_bounded",
    "describe_os_error",
    "exchange",
    "file_kind",
    "load_npz",
    "loads_strict",
    "read_bounded",
    "write_file",
    "writing",
]

# POSIX limits on Linux and macOS file systems: one path component, and a whole path.
NAME_MAX = 255
PATH_MAX = 4096
# rnnexport's own documents nest at most six levels; 64 leaves room and stays far from recursion limits.
MAX_JSON_DEPTH = 64


def describe_os_error(exc: OSError) -> str:
    """``strerror`` with the symbolic errno, e.g. ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words, for messages."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def check_path(path: Path | str, *, what: str, error: type[RnnExportError] = UsageError) -> Path:
    """Refuse a path the operating system would refuse for its length, before anything touches it.

    Every component must fit in :data:`NAME_MAX` bytes and the whole path in :data:`PATH_MAX`
    (encoded as the file system encodes it); otherwise ``stat`` and ``open`` fail with
    ``ENAMETOOLONG`` in places that cannot explain which option was at fault.
    """
    path = Path(path)
    encoded = os.fsencode(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            shown = part[:40] + "..."
            raise error(
                f"{what} {shown!r} has a path component of {size} bytes; file systems allow at most "
                f"{NAME_MAX} bytes per name. Use a shorter name."
            )
    if len(encoded) >= PATH_MAX:
        raise error(
            f"{what} is a path of {len(encoded)} bytes; the limit is {PATH_MAX - 1}. Use a shorter path."
        )
    return path


def read_bounded(
    path: Path, *, limit: int, what: str, error: type[RnnExportError] = UsageError, fix: str = ""
) -> bytes:
    """The bytes of the regular file ``path``, read once; refuse anything else with ``error``.

    Refused, each with a message naming ``what`` and the path: a missing file, a symbolic link (not
    followed), a folder, FIFO, device or socket (checked with ``lstat`` before opening, so nothing
    blocks), and a file larger than ``limit`` bytes (checked before reading, and again while
    reading, in case it grows). ``fix`` is appended to every message.
    """
    chunks: list[bytes] = []
    _read_chunks(path, chunks.append, limit=limit, what=what, error=error, fix=fix)
    return b"".join(chunks)


def copy_bounded(
    path: Path,
    destination: Path | None,
    *,
    limit: int,
    what: str,
    error: type[RnnExportError] = UsageError,
    fix: str = "",
) -> tuple[str, int]:
    """Read ``path`` once, as :func:`read_bounded` does, hashing it and writing it to ``destination``.

    Returns the sha256 (hex) and the size of the bytes read. For files too large to hold in memory
    (ONNX external data): the copy in ``destination`` (a new file, in a folder the caller owns) is
    byte for byte what was hashed, so whatever later reads the copy reads the verified bytes, however
    the original changes meanwhile. ``destination`` None only hashes.
    """
    digest = hashlib.sha256()
    size = 0
    handle = None if destination is None else destination.open("xb")
    try:

        def take(chunk: bytes) -> None:
            nonlocal size
            digest.update(chunk)
            size += len(chunk)
            if handle is not None:
                _write(handle, chunk)

        try:
            _read_chunks(path, take, limit=limit, what=what, error=error, fix=fix)
        except OSError as exc:  # writing the private copy: a full temporary folder
            raise error(
                f"Cannot copy {what} {path} to {destination}: {describe_os_error(exc)}. Free some space "
                "in the temporary folder (TMPDIR), or point TMPDIR at a larger one."
            ) from None
    finally:
        if handle is not None:
            handle.close()
    return digest.hexdigest(), size


def _read_chunks(
    path: Path,
    take: Callable[[bytes], None],
    *,
    limit: int,
    what: str,
    error: type[RnnExportError],
    fix: str,
) -> None:
    """The checks and the one read of :func:`read_bounded`, handing each chunk to ``take``."""
    check_path(path, what=what, error=error)
    tail = f" {fix}" if fix else ""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise error(f"Cannot read {what} {path}: {describe_os_error(exc)}.{tail}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(
            f"{what} {path} is {file_kind(info.st_mode)}; expected a regular file (links are not "
            f"followed, and pipes or devices are never opened).{tail}"
        )
    if info.st_size > limit:
        raise error(
            f"{what} {path} is {info.st_size:,} bytes; the limit is {limit:,} bytes. It is not "
            f"what rnnexport expects there.{tail}"
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"Cannot read {what} {path}: {describe_os_error(exc)}.{tail}") from None
    try:
        opened = os.fstat(fd)
        # The path may have been swapped between lstat and open: check what was actually opened.
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise error(f"{what} {path} changed while it was being opened; refusing to read it.{tail}")
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 24, limit + 1 - total))
            except OSError as exc:
                raise error(f"Cannot read {what} {path}: {describe_os_error(exc)}.{tail}") from None
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise error(f"{what} {path} grew past the limit of {limit:,} bytes while it was read.{tail}")
            take(chunk)
    finally:
        os.close(fd)


def _write(handle: BinaryIO, data: bytes) -> None:
    # One seam for the actual write, so tests can simulate a full disk without filling one.
    handle.write(data)


def write_file(path: Path, data: bytes, *, where: Path | None = None) -> None:
    """Write ``data`` to a new file ``path``; a full disk or a size limit becomes one message.

    ``where`` names the folder being assembled, for the message. Raises :class:`ArtifactError`
    (exit 1): nothing was published, and the caller's staging cleanup removes what was written.
    """
    try:
        with path.open("xb") as handle:
            _write(handle, data)
    except OSError as exc:
        folder = where if where is not None else path.parent
        hint = {
            errno.ENOSPC: "Free some space there, or choose another --out.",
            errno.EDQUOT: "The disk quota is exhausted: free some space, or choose another --out.",
            errno.EFBIG: "A file-size limit (ulimit -f, or the file system's) is lower than this file.",
        }.get(exc.errno or 0, "Choose an --out folder you can write to.")
        raise ArtifactError(
            f"Cannot write {path.name} ({len(data):,} bytes) into {folder}: {describe_os_error(exc)}. "
            f"Nothing was published. {hint}"
        ) from None


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Within the block, an ``OSError`` (disk full, size limit, name too long) becomes :class:`ArtifactError`.

    For the steps around :func:`write_file` that create folders and rename: one message, exit 1,
    and the staging folder's cleanup removes whatever was written.
    """
    try:
        yield
    except OSError as exc:
        raise ArtifactError(
            f"Cannot write the artifact under {folder}: {describe_os_error(exc)}"
            + (f" ({exc.filename})" if exc.filename else "")
            + ". Nothing was published. Free some space there, or choose another --out."
        ) from None


# -- numpy archives -------------------------------------------------------------------------------


def _read_npy(raw: bytes, *, name: str, origin: str, error: type[RnnExportError]) -> np.ndarray:
    """One ``.npy`` member, its header checked against its data before any allocation."""
    handle = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise error(f"Cannot read --inputs {origin}: array '{name}': {exc}.") from None
    if dtype.hasobject:
        raise error(
            f"Cannot read --inputs {origin}: array '{name}' holds Python objects (a pickle); "
            "only numeric arrays are read."
        )
    expected = math.prod(shape) * dtype.itemsize
    offset = handle.tell()
    if len(raw) - offset != expected:
        raise error(
            f"Cannot read --inputs {origin}: array '{name}' declares shape {list(shape)} of {dtype} "
            f"({expected:,} bytes) "
            f"but holds {len(raw) - offset:,} bytes. Save it again with np.savez."
        )
    array: np.ndarray = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset)
    result: np.ndarray = array.reshape(shape, order="F" if fortran else "C").copy()
    return result


def load_npz(
    data: bytes, *, origin: str, limit: int, error: type[RnnExportError] = UsageError
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` held in ``data``, bounded; ``error`` on anything else.

    The sizes the archive's entries declare are checked against ``limit`` before anything is
    decompressed (a decompression bomb is refused unopened), no entry is read past its declared
    size, and each ``.npy`` header's shape is checked against its data before any allocation.
    Object arrays (pickles) are refused.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise error(f"Cannot read --inputs {origin}: {exc}.") from None
    members = archive.infolist()
    declared = sum(m.file_size for m in members)
    if len(members) > 64 or declared > limit:
        largest = max(members, key=lambda m: m.file_size)
        raise error(
            f"--inputs {origin} holds {len(members)} array(s) of {format_bytes(declared)} once decompressed "
            f"('{largest.filename}' alone is {format_bytes(largest.file_size)}); the limit is "
            f"{format_bytes(limit)} in at most 64 arrays. Verification inputs are a few cases: use smaller "
            "batches or shorter sequences. Nothing was decompressed."
        )
    feeds: dict[str, np.ndarray] = {}
    for member in members:
        name = member.filename.removesuffix(".npy")
        if name in feeds or not member.filename.endswith(".npy"):
            raise error(f"--inputs {origin} holds '{member.filename}', which is not one array per input.")
        try:
            with archive.open(member) as handle:
                raw = handle.read(member.file_size + 1)  # never more than declared, whatever the stream says
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise error(f"Cannot read '{member.filename}' in --inputs {origin}: {exc}.") from None
        if len(raw) > member.file_size:
            raise error(f"'{member.filename}' in --inputs {origin} is larger than its zip entry declares.")
        feeds[name] = _read_npy(raw, name=name, origin=origin, error=error)
    return feeds


# -- strict JSON -----------------------------------------------------------------------------------


class _JSONProblem(ValueError):
    """A strictness rule was broken; the message says which."""


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text``, ignoring brackets inside strings."""
    # Counted before parsing: the json module recurses once per level and would hit the
    # interpreter's recursion limit (a RecursionError) on a document of a few thousand brackets.
    bare = _STRING.sub("", text).encode("ascii", "ignore")
    codes = np.frombuffer(bare, dtype=np.uint8)
    if codes.size == 0:
        return 0
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(opens.astype(np.int64) - closes.astype(np.int64)).max())


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JSONProblem(f"the key {key!r} appears twice in one object (which one is meant?)")
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JSONProblem(f"the number {text} is out of range (not a finite float)")
    return value


def _constant(name: str) -> float:
    raise _JSONProblem(f"{name} is not a JSON number")


def loads_strict(
    data: bytes | str, *, what: str, error: type[RnnExportError] = UsageError, fix: str = ""
) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity, numbers that overflow, and deep nesting.

    Raises ``error`` with a message naming ``what`` and, where the parser knows it, the line.
    """
    tail = f" {fix}" if fix else ""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc}).{tail}") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted.{tail}")
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_float=_finite_float, parse_constant=_constant)
    except _JSONProblem as exc:
        raise error(f"{what} is not acceptable JSON: {exc}.{tail}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON: {exc}.{tail}") from None


# renameat2(2): its flag that swaps two existing paths, the "current folder" descriptor, and the
# system call's number where glibc lacks the wrapper (before 2.28), per architecture.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_RENAMEAT2_SYSCALL = {
    "x86_64": 316,
    "aarch64": 276,
    "riscv64": 276,
    "i386": 353,
    "i686": 353,
    "armv7l": 382,
    "ppc64le": 357,
    "s390x": 347,
}


def _renameat2(source: Path, target: Path, flags: int) -> int:
    """``renameat2(AT_FDCWD, source, AT_FDCWD, target, flags)``: 0, or the errno it failed with
    (``ENOSYS`` where there is no such call: not Linux, or an architecture not listed above)."""
    if not sys.platform.startswith("linux"):
        return errno.ENOSYS
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return errno.ENOSYS
    paths = (os.fsencode(source), os.fsencode(target))
    wrapper = getattr(libc, "renameat2", None)
    if wrapper is not None:
        wrapper.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        wrapper.restype = ctypes.c_int
        result = wrapper(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], flags)
    else:
        number = _RENAMEAT2_SYSCALL.get(platform.machine())
        if number is None:
            return errno.ENOSYS
        libc.syscall.restype = ctypes.c_long
        result = libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(paths[0]),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(paths[1]),
            ctypes.c_uint(flags),
        )
    return 0 if result == 0 else ctypes.get_errno() or errno.EIO


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step; True when done.

    Linux's ``renameat2`` with ``RENAME_EXCHANGE``: afterwards each name holds what the other held,
    and at no moment is either name missing. False, with nothing changed, where the swap did not
    happen: another operating system, a kernel or C library without the call, a file system that
    refuses the flag (``EINVAL``), a sandbox that blocks it, or any other failure. The caller then
    does it the portable way, whose own errors say what is wrong.
    """
    return _renameat2(first, second, _RENAME_EXCHANGE) == 0
