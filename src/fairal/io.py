"""Writing files and folders that nothing can corrupt: atomic writes, folders published whole, stale partials of dead
processes cleaned up, folders marked as fairal's own, and exclusive locks on the folders being written.

- A file is written beside its target as ``.NAME.partial-PID``, flushed to disk and moved over the target, so a
  crash or a kill never leaves a half-written record.
- A folder (a dataset, a query's outputs) is built as ``.NAME.partial-PID`` beside its target and renamed into place
  at the end; what a killed process left behind is removed by the next writer (its PID is no longer alive).
- A folder fairal made carries a marker file (``.fairal``), and only such a folder is ever replaced: a folder the
  user made, or one holding the user's inputs, is never removed.
- A folder being written holds an exclusive ``flock`` on ``.fairal.lock``; a second writer is refused with the PID
  of the first. The kernel releases the lock when its holder dies, however it dies.
- Every file fairal writes is named through :func:`within`: its path, resolved, must lie inside the output folder,
  so no name (a case id, a group) and no symbolic link can lead a write elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from fairal.errors import FairalError

MARKER = ".fairal"
LOCK = ".fairal.lock"
#: What :func:`publish_folder` wrote into a folder: each file's relative path, size and SHA-256, so that
#: ``--overwrite`` replaces only that (a file put there since, or changed, is the user's).
WRITTEN = ".fairal-files.json"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)(?P<rest>.*)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is moved into place: ``.NAME.partial-PID`` beside it."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def clean_stale_partials(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the ``.NAME.partial-PID*`` files and folders in ``folder`` whose writing process is dead (a kill -9
    leaves them behind); with ``name``, only those of that target (in a folder that is not fairal's own, nothing
    else is touched). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _PARTIAL.match(entry.name)
        if not m or (name is not None and m["name"] != name) or pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def check_input_file(path: str | Path, what: str) -> Path:
    """A file the user names as input (``what``: "CSV file", ...): refused, saying what it is instead, unless it is a
    regular file; a folder, a device such as /dev/zero or a named pipe is never opened (it could be read forever)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FairalError(f"{path}: file not found") from None
    except OSError as err:
        raise FairalError(f"{path}: cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise FairalError(f"{path} is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise FairalError(f"{path} is {kind}, not a {what} (a regular file)")
    return path


def within(folder: str | Path, *names: str) -> Path:
    """``folder/names...``, the one way fairal names a file it writes: refused unless the path, resolved, lies
    inside ``folder`` (a name with ``..`` or an absolute path, or a symbolic link that leads out, never does)."""
    folder = Path(folder)
    target = folder.joinpath(*names)
    if not _inside(target, folder) or target.resolve() == folder.resolve():
        raise FairalError(f"refused to write {target}: it lies outside the output folder {folder}")
    return target


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to write the file, fsync it, and move it over ``path`` (same folder, so the move is
    atomic). On any error the temporary file is removed and the target is untouched; an error of the file system
    (a full disk) names ``path``."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


class _Recorded:
    """A file object that keeps the first error of its writes: torch reports a failed write (a full disk) only as
    ``enforce fail at inline_container.cc``, without the cause."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def write_torch(path: str | Path, obj) -> None:
    """``torch.save`` atomically, through a file object (so the archive's inner name does not depend on the
    temporary file's name and the same object gives the same bytes)."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            out = _Recorded(f)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise

    atomic_write(path, save)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def check_output_folder(out: str | Path, what: str = "--out") -> Path:
    """Refuse, before any work is done, an output folder that cannot be one: a file, a symbolic link, or a place
    where nothing can be written."""
    out = Path(out)
    if out.is_symlink():
        raise FairalError(f"{what} {out} is a symbolic link; give the real folder")
    if out.exists() and not out.is_dir():
        raise FairalError(f"{what} {out} exists and is not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise FairalError(f"{what} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "permission denied"
        raise FairalError(f"{what} {out}: cannot write in {parent} ({why})")
    return out


def check_output_file(path: str | Path, overwrite: bool = False, what: str = "--out") -> Path:
    """Refuse, before any work is done, a file that cannot be written: a folder, a symbolic link, a file there
    already (without ``overwrite``), or a place where nothing can be written. Missing folders above it are made
    when it is written."""
    path = Path(path)
    if path.is_symlink():
        raise FairalError(f"{what} {path} is a symbolic link; give the real file")
    if path.is_dir():
        raise FairalError(f"{what} {path} is a folder; give a file name (e.g. {path / 'calibration.json'})")
    if path.exists() and not overwrite:
        raise FairalError(f"{what} {path} exists: choose another file or add --overwrite")
    check_output_folder(path.parent, what)
    return path


def is_fairal_folder(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def mark(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as made by fairal (``kind``: what it holds)."""
    within(folder, MARKER).write_text(kind + "\n")


def _has_content(folder: Path) -> bool:
    return folder.exists() and any(e.name != LOCK for e in folder.iterdir())


def check_own_folder(out: str | Path, kind: str, what: str = "--out") -> Path:
    """A folder that fairal writes into and continues (a run, a baseline, a study's results): absent, empty, or
    marked by fairal as one of ``kind``; a folder of the user's, or fairal's of another kind, is refused. ``what``:
    how the message names the folder (the option or argument that gave it)."""
    out = check_output_folder(out, what)
    if _has_content(out) and (not is_fairal_folder(out) or (out / MARKER).read_text().strip() != kind):
        raise FairalError(f"{what} {out} is not empty and was not made by fairal for a {kind} (no {MARKER} marker "
                          f"saying so): fairal never writes into a folder of yours; choose a new or empty folder")
    return out


def make_own_folder(out: Path, kind: str) -> None:
    """Create ``out`` (allowed by :func:`check_own_folder`) and mark it as fairal's, holding a ``kind``."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_fairal_folder(out):
        mark(out, kind)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_replaceable(out: str | Path, overwrite: bool, inputs: list[str | Path] = (), what: str = "--out") -> None:
    """The rules for replacing an existing output folder: it must be empty, or ``overwrite`` must be given and the
    folder must carry fairal's marker; and it must never hold one of the ``inputs``. ``what``: how the messages
    name the folder (``--out``, or ``OUT`` where it is an argument)."""
    out = check_output_folder(out, what)
    for p in inputs:
        if p and (Path(p).resolve() == out.resolve() or _inside(Path(p), out)):
            raise FairalError(f"{what} {out} holds the input {p}: choose an output folder apart from your data")
    if not _has_content(out):
        return
    if not overwrite:
        raise FairalError(f"{what} {out} exists and is not empty: choose another {what} or add --overwrite")
    if not is_fairal_folder(out):
        raise FairalError(f"{what} {out} was not made by fairal (no {MARKER} marker): --overwrite only replaces "
                          f"fairal's own output folders; remove it yourself or choose another {what}")
    check_written(out, what)


def check_written(out: Path, what: str, own: tuple[str, ...] = ()) -> None:
    """A folder :func:`publish_folder` made may be replaced only while it holds what fairal wrote there, unchanged;
    ``own``: the folders fairal adds to it later (a dataset's volume cache, ``cache/``), whose files are its own."""
    foreign = [f for f in files_not_written(out) if not f.startswith(tuple(f"{o}/" for o in own))]
    if foreign:
        named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FairalError(f"{what} {out} holds {len(foreign)} file(s) fairal did not write there, or that changed "
                          f"since ({named}): --overwrite replaces only what fairal wrote; move them out of it or "
                          f"choose another {what}")


def _listing(folder: Path) -> dict[str, list]:
    """Every file (or link) under ``folder`` but fairal's marker, lock and listing: ``{relative path: [size,
    SHA-256]}`` (a link: its target's text), so that the same work lists the same bytes."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in (MARKER, LOCK, WRITTEN):
                continue
            if path.is_symlink():
                found[rel] = [-1, os.readlink(path)]
                continue
            found[rel] = [path.stat().st_size, sha256(path)]
    return found


def files_not_written(folder: Path) -> list[str]:
    """The files of a folder :func:`publish_folder` made that it did not write, or that changed since (sorted);
    none for a folder made before fairal kept the listing (it cannot tell)."""
    try:
        written = json.loads((folder / WRITTEN).read_text())
    except (OSError, ValueError):
        return []
    return sorted(rel for rel, stamp in _listing(folder).items() if written.get(rel) != stamp)


@contextlib.contextmanager
def publish_folder(out: str | Path, kind: str) -> Iterator[Path]:
    """Build a folder in ``.NAME.partial-PID`` beside ``out`` and move it into place when the block ends without
    error (replacing a fairal folder already there); on an error nothing is left. The caller has checked the
    rules (:func:`check_replaceable`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out.parent, out.name)  # the user's folder: only this target's leftovers
    tmp = partial_path(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        mark(tmp, kind)
        (tmp / WRITTEN).write_text(json.dumps(_listing(tmp), sort_keys=True))
        if out.exists():
            old = out.with_name(f".{out.name}.partial-{os.getpid()}-old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderLock:
    """An exclusive lock on a folder while it is written (``with FolderLock(out, "run"):``).

    Held with ``flock`` on ``out/.fairal.lock``, which also records the holder's PID and what it does; a second
    process is refused at once with a message naming the holder. The lock dies with its process.
    """

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = within(self.folder, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = path.read_text().strip() or "another process"
            raise FairalError(f"{self.folder} is being written by {holder}; wait for it to end or choose another "
                              "folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({self.what})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_stamp(path: str | Path) -> tuple | None:
    """What changes when a file is replaced or rewritten (None: no such file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


_VERSIONS: dict[str, tuple[tuple | None, str]] = {}  # path: (its stamp, its version), hashed once per stamp
_VERSIONS_LOCK = threading.Lock()


def file_version(path: str | Path) -> str:
    """``sha256:`` and the first 12 hex digits of the file's SHA-256 (read again only when the file's stamp
    changes): the model version the app's rankings are stored under and its answers name."""
    path = str(path)
    stamp = file_stamp(path)
    with _VERSIONS_LOCK:
        known = _VERSIONS.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
    version = f"sha256:{sha256(path)[:12]}"
    with _VERSIONS_LOCK:
        _VERSIONS[path] = (stamp, version)
    return version
