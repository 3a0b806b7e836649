"""Publishing an artifact: the destination checked, a staging folder beside it, and the atomic swap.

Folders rnnexport creates beside a destination carry their owner in their name
(``.NAME.partial-PID-START-XXXX`` while building, ``.NAME.old-PID-START`` while ``--force`` swaps),
where START is the owner's process start time, so a later run can tell a live build's folder from
a dead one's even when the PID has been reused, and clean up or finish what the dead one left.
Torch-free.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rnnexport.artifact.manifest import (
    _REBUILD,
    _TEST_FILE,
    _TEST_SET,
    BENCH_FILE,
    EXTERNAL_DATA,
    MANIFEST,
    MODEL,
    parse_manifest,
)
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.limits import DEFAULT_LIMITS
from rnnexport.safeio import (
    check_path,
    describe_os_error,
    exchange,
    file_kind,
    read_bounded,
)
from rnnexport.streaming import INITIAL_FOLDER, STATE_IN
from rnnexport.variants.make import FORMATS, PRECISIONS, REQUIRED_OPERATORS, variant_file

__all__ = ["prepare_destination", "publish", "recover_destination", "staging_folder"]

_OWNED = re.compile(
    r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>[0-9]{1,10})"
    r"(?:-(?P<start>[0-9]{1,20}))?(?:-[A-Za-z0-9_]{1,32})?"
)


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, from /proc), or None when unknown."""
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_token() -> str:
    """``PID-START`` of this process: unique among live processes, and across PID reuse."""
    return f"{os.getpid()}-{_start_time(os.getpid()) or 0}"


def _owner_alive(pid: int, start: str | None) -> bool:
    """Whether the process that named a folder ``pid``/``start`` is still running."""
    if f"{pid}-{start}" == _owner_token():
        return True  # our own folder
    if pid == os.getpid():
        return False  # our PID, but another (earlier) process: the PID was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = _start_time(pid)
    # A recorded start time that differs means the PID now belongs to another process.
    return not (start is not None and start != "0" and current is not None and current != start)


@dataclass(frozen=True)
class _Leftover:
    path: Path
    kind: str
    pid: int
    start: str | None


def _leftovers(destination: Path) -> list[_Leftover]:
    """Staging and swap folders of dead processes beside ``destination`` (for its name only)."""
    found = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return []
    for entry in entries:
        match = _OWNED.fullmatch(entry.name)
        if match is None or match["name"] != destination.name:
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue  # only our own kind of folder, never a link or a file of the same name
        pid, start = int(match["pid"]), match["start"]
        if not _owner_alive(pid, start):
            found.append(_Leftover(Path(entry.path), match["kind"], pid, start))
    return sorted(found, key=lambda f: f.path.name)


def recover_destination(destination: Path, *, clean: bool = True) -> list[str]:
    """Finish or undo what a killed build left beside ``destination``; return what was done, in words.

    - ``destination`` missing and a dead ``--force`` swap's ``.NAME.old-*`` beside it: the previous
      artifact is moved back (the swap was interrupted between its two renames);
    - ``destination`` present and such a folder beside it: the swap had finished; with ``clean``
      the leftover is removed;
    - with ``clean``, dead builds' ``.NAME.partial-*`` staging folders are removed.

    Only folders named like rnnexport's own, and only when their owning process is gone.
    """
    notes = []
    leftovers = _leftovers(destination)
    olds = [f for f in leftovers if f.kind == "old"]
    if olds and not os.path.lexists(destination):
        newest = max(olds, key=lambda f: f.path.lstat().st_mtime)
        newest.path.rename(destination)
        olds.remove(newest)
        notes.append(
            f"restored the previous artifact {destination} from {newest.path.name}: a --force rebuild "
            f"(pid {newest.pid}) was interrupted after moving it aside and before moving the new one in"
        )
    if clean:
        for leftover in olds:
            shutil.rmtree(leftover.path, ignore_errors=True)
            notes.append(
                f"removed {leftover.path.name}, the old artifact a finished but interrupted --force rebuild "
                f"(pid {leftover.pid}) left behind"
            )
        for leftover in leftovers:
            if leftover.kind != "partial":
                continue
            if not _holds_only_build_output(leftover.path):
                notes.append(
                    f"left {leftover.path.name} in place: it is named like a staging folder of a dead "
                    "build, but holds files rnnexport does not write"
                )
                continue
            shutil.rmtree(leftover.path, ignore_errors=True)
            notes.append(
                f"removed the staging folder {leftover.path.name} of a build (pid {leftover.pid}) "
                "that is no longer running"
            )
    return notes


def _holds_only_build_output(folder: Path) -> bool:
    """True when ``folder`` holds nothing but what a build writes into its staging folder, or what
    an artifact holds (a ``--force`` exchange leaves the old artifact under the staging folder's name)."""
    artifact_files = {
        MODEL,
        EXTERNAL_DATA,
        MANIFEST,
        REQUIRED_OPERATORS,
        BENCH_FILE,
        *(variant_file(p, f) for p in PRECISIONS for f in FORMATS),
    }
    try:
        for entry in os.scandir(folder):
            mode = entry.stat(follow_symlinks=False).st_mode
            if entry.name in artifact_files and stat.S_ISREG(mode):
                continue
            initial = entry.name == INITIAL_FOLDER
            if not ((_TEST_SET.fullmatch(entry.name) or initial) and stat.S_ISDIR(mode)):
                return False
            for inner in os.scandir(entry.path):
                expected = (
                    inner.name.startswith(STATE_IN) and inner.name.endswith(".pb")
                    if initial
                    else _TEST_FILE.fullmatch(inner.name)
                )
                if not (expected and inner.is_file(follow_symlinks=False)):
                    return False
    except OSError:
        return False
    return True


def _first_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    while not os.path.lexists(path):
        path = path.parent
    return path


def _replaceable_problem(destination: Path) -> str | None:
    """Why ``--force`` must not replace ``destination``, or None when it holds an rnnexport artifact."""
    mode = destination.lstat().st_mode
    if not stat.S_ISDIR(mode):
        return f"it is {file_kind(mode)}, not an artifact folder"
    if not os.path.lexists(destination / MANIFEST):
        return f"it has no {MANIFEST}"
    try:
        data = read_bounded(
            destination / MANIFEST, limit=DEFAULT_LIMITS.manifest_bytes, what="manifest", error=ArtifactError
        )
        parse_manifest(data, path=destination / MANIFEST)
    except ArtifactError as exc:
        reason = str(exc).removesuffix(f" {_REBUILD}").rstrip(".")
        return f"its {MANIFEST} is not valid ({reason})"
    return None


def prepare_destination(out: Path, name: str, *, force: bool) -> tuple[Path, list[str]]:
    """Check that ``out/name`` can receive an artifact, before any work is done.

    Returns the destination and notes on what a killed earlier build left there and this one
    restored or removed (see :func:`recover_destination`).
    """
    check_path(out / name, what="--out")
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(
            f"--out must be a folder, but {out} is a file. Pass a folder path (it is created if missing)."
        )
    destination = out / name
    notes = recover_destination(destination) if out.is_dir() else []
    if destination.is_symlink():
        raise UsageError(
            f"{destination} is a symbolic link; refusing to write through it. "
            "Remove it or choose another --out."
        )
    if os.path.lexists(destination):
        if not force:
            done = "".join(f" (Before this check, rnnexport {note}.)" for note in notes)
            raise UsageError(
                f"{destination} already exists. rnnexport never overwrites silently: pass --force to "
                f"replace it completely, or choose another --out.{done}"
            )
        problem = _replaceable_problem(destination)
        if problem:
            raise UsageError(
                f"--force replaces only an rnnexport artifact, and {destination} is not one: {problem}. "
                "Nothing was deleted. Move it away yourself, or choose another --out."
            )
    probe = _first_existing(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write under {out}: {probe} is not writable. Choose another --out.")
    return destination, notes


@contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A temporary folder beside ``destination``, removed on exit unless it was published.

    Its name records this process (``.NAME.partial-PID-START-XXXX``) so that, if this process is
    killed outright, the next build can tell it is stale. On any exit, including Ctrl-C and the
    signals :mod:`rnnexport.signals` handles, folders this created on the way (a missing ``--out``)
    are removed again if they are still empty, so a failed build leaves the disk as it was.
    """
    existing = _first_existing(destination.parent)
    # Folders this creates on the way, innermost first, so they can be removed again.
    created = list(
        itertools.takewhile(lambda p: p != existing, [destination.parent, *destination.parent.parents])
    )
    staging: Path | None = None
    try:
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(
                tempfile.mkdtemp(
                    prefix=f".{destination.name}.partial-{_owner_token()}-", dir=destination.parent
                )
            )
        except OSError as exc:
            raise UsageError(
                f"Cannot write under {destination.parent}: {describe_os_error(exc)}. "
                "Choose an --out folder you can write to."
            ) from None
        staging.chmod(0o755)  # mkdtemp makes it private; the published artifact should read like any folder
        yield staging
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


def _aside_name(destination: Path) -> Path:
    """A free ``.NAME.old-PID-START`` name beside ``destination`` (a suffix added if it is taken)."""
    base = f".{destination.name}.old-{_owner_token()}"
    for n in itertools.count():
        candidate = destination.with_name(base if n == 0 else f"{base}-{n}")
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def publish(staging: Path, destination: Path, *, force: bool) -> None:
    """Move a complete artifact into place; with ``force`` the old one is replaced as a whole.

    Each step is a rename within one folder, so a reader sees the old artifact or the new one, never
    a mix. Where the operating system swaps two folders atomically (:func:`~rnnexport.safeio.exchange`),
    ``force`` is that one step: the destination holds a complete artifact at every moment, and the
    old one, left in the staging folder's place, is then removed. Elsewhere it takes two renames: an
    interruption leaves the old artifact in place, and a kill between them leaves it in
    ``.NAME.old-PID-START``, which the next build or verify moves back.
    """
    old = None
    if os.path.lexists(destination):  # checked again: someone may have written it meanwhile
        problem = _replaceable_problem(destination) if force else "pass --force to replace it"
        if problem:
            raise UsageError(
                f"{destination} appeared or changed while building ({problem}); nothing was replaced."
            )
        if exchange(staging, destination):
            # A kill from here on leaves the old artifact under the staging folder's name, which the
            # next build removes like any dead build's staging folder.
            shutil.rmtree(staging, ignore_errors=True)
            return
        old = _aside_name(destination)
    # Both renames inside one try: Ctrl-C (or a handled signal) can only strike between statements,
    # and wherever it does, the old artifact goes back unless the new one is already in place.
    try:
        if old is not None:
            destination.rename(old)
        staging.rename(destination)
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(destination):
            old.rename(destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
