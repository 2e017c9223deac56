"""Writing files so that a kill never leaves half of one: atomic writes and JSON-lines records.

- :func:`atomic_write` — the whole file or nothing: a temporary file in the same folder, flushed and
  ``fsync``-ed, given the permissions of a plainly created file (``0o666`` less the umask), renamed over the
  target, the folder synced; on any error the temporary file is removed and the target is untouched.
  :func:`atomic_path` is the same for writers that need a file name or check the file before it replaces the
  target (the exporters); :func:`copy_tree` copies a folder so that the target is the old folder or the whole
  copy (registering a predictor).
- :func:`append_jsonl` — one record, one line, one ``write`` (flushed; ``fsync`` on request).
- :func:`read_jsonl` — the records of such a file. A line that is not a record is an error naming the file and
  the line, except a torn last line (no newline after it: a writer killed mid-write), which is dropped with a
  warning that says so (and, with ``repair``, cut from the file so that the next append starts a clean line);
  :func:`parse_jsonl` is its parser, shared with the builder's measurement store. A ``.gz`` file (a store kept
  compressed in the repository) is read through gzip, never repaired.

Limitations
-----------
- Atomic on POSIX file systems (``os.replace``); the folder sync is skipped where the platform cannot open a
  folder.
- Records are read whole into memory (these files hold up to some thousand records).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from hwnas.errors import StoreError

__all__ = ["append_jsonl", "atomic_path", "atomic_write", "copy_tree", "parse_jsonl", "read_jsonl"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Write a whole file atomically: readers see the old file or the new one, never a part.

    Parameters
    ----------
    path : str or path-like
        The target; its folder is created if missing.
    data : bytes, str or callable
        The content (``str`` is written as UTF-8), or a function writing it to a binary file object
        (e.g. ``lambda f: torch.save(state, f)``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file next to ``path`` to write under; it replaces ``path`` when the block ends without an error.

    For writers that need a file name (``torch.onnx.export``, ``torch.jit.save``) or check the written file
    before it replaces the target. When the block ends, the file is ``fsync``-ed, given the permissions of a
    plainly created file and renamed over ``path`` (the folder synced); when the block raises, the temporary file
    is removed and ``path`` is untouched. :func:`atomic_write` is this with the content given.

    Parameters
    ----------
    path : str or path-like
        The target; its folder is created if missing.

    Yields
    ------
    Path
        The temporary file (created empty, in ``path``'s folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _file_mode())   # mkstemp makes 0600; a result file is as shareable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def copy_tree(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the folder ``src`` to ``dest`` so that ``dest`` is never a partial copy.

    The copy goes to a temporary folder next to ``dest`` (every file ``fsync``-ed), which then takes the place of
    ``dest``: an existing ``dest`` is moved aside first (put back if the swap fails) and removed afterwards. On any
    error before the swap the temporary folder is removed and ``dest`` is untouched.

    Parameters
    ----------
    src, dest : str or path-like
        Folders; ``dest``'s parent is created if missing.

    Returns
    -------
    Path
        ``dest``.
    """
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; give it a plain mkdir's permissions
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old / dest.name, dest)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _sync_dir(dest.parent)
    return dest


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass   # not supported for folders here: the rename still happened
    finally:
        os.close(fd)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any], *, fsync: bool = False,
                 default: Callable[[Any], Any] | None = None) -> None:
    """Append one record as one JSON line, in one ``write``.

    Parameters
    ----------
    path : str or path-like
        The JSON-lines file (created if missing).
    record : mapping
        A JSON-serialisable record (``NaN`` allowed, as Python's ``json`` writes it).
    fsync : bool
        Also sync the file to disk (for records worth a disk flush, e.g. a finished trial).
    default : callable, optional
        ``json.dumps``'s ``default`` for values it cannot serialise.
    """
    line = json.dumps(dict(record), default=default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, valid: Callable[[Any], bool] | None = None, repair: bool = False,
               what: str = "a JSON record") -> list[Any]:
    """The records of a JSON-lines file, in file order (``[]`` if there is no file).

    Parameters
    ----------
    path : str or path-like
        The file; blank lines are skipped. A name ending in ``.gz`` is decompressed first.
    valid : callable, optional
        A record's check (e.g. that it has the fields of a trial); a line failing it counts as unreadable.
    repair : bool
        Cut a torn last line from the file, so that the next append starts on a clean line (not for ``.gz``).
    what : str
        What a line should be, for the error message (``"a trial record"``).

    Returns
    -------
    list
        The decoded records.

    Raises
    ------
    StoreError
        A line other than a torn last one is not valid JSON or fails ``valid``; the message names the file and
        the line.

    Warns
    -----
    UserWarning
        A torn last line was dropped (and, with ``repair``, cut).
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        if repair:
            raise ValueError(f"{path}: a gzip file is read only, it cannot be repaired (repair=True)")
        raw = gzip.decompress(raw)
    records, complete, torn = parse_jsonl(raw, str(path), valid=valid, what=what)
    if torn:   # no newline after it: cut short by a kill, whatever it parses to
        line = raw.count(b"\n") + 1
        warnings.warn(f"{path}: line {line} is torn (a write cut short, e.g. by a kill): dropped"
                      + (" and cut from the file" if repair else ""), stacklevel=2)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(complete)
    return records


def parse_jsonl(data: bytes, source: str, *, valid: Callable[[Any], bool] | None = None,
                what: str = "a JSON record") -> tuple[list[Any], int, bool]:
    """The records of JSON-lines content, the one parser of :func:`read_jsonl` and the measurement store.

    Only a line ending with its newline is complete (a record is written as one line with its newline): the piece
    after the last newline is a torn write, dropped here; the caller says so (and may cut it). Blank lines are
    skipped.

    Parameters
    ----------
    data : bytes
        The whole content (decompressed).
    source : str
        What the content is, for the error message (a path, ``"measurement store 'x.jsonl'"``).
    valid : callable, optional
        A record's check; a line failing it counts as unreadable.
    what : str
        What a line should be, for the error message (``"a trial record"``).

    Returns
    -------
    records : list
        The decoded records of the complete lines, in order.
    complete : int
        Bytes of the complete lines (through the last newline; 0 without one): where a torn tail starts.
    torn : bool
        Whether a non-blank piece follows the last newline (a torn last line, dropped).

    Raises
    ------
    StoreError
        A complete line is not valid JSON (or UTF-8) or fails ``valid``; the message names ``source`` and the
        line.
    """
    lines = data.split(b"\n")
    tail = lines.pop()   # after the last newline: b"" unless the last line is torn
    records: list[Any] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = valid is None or bool(valid(rec))
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise StoreError(f"{source}: line {n} is not {what} ({line.strip()[:80]!r}); the file is corrupt at "
                             f"line {n} (a kill tears only the last line): remove that line or start afresh")
        records.append(rec)
    return records, len(data) - len(tail), bool(tail.strip())
