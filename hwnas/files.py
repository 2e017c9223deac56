"""Writing files so that a kill never leaves half of one: atomic writes and JSON-lines records.

- :func:`atomic_write` — the whole file or nothing: a temporary file in the same folder, flushed and
  ``fsync``-ed, given the permissions of a plainly created file (``0o666`` less the umask), renamed over the
  target, the folder synced; on any error the temporary file is removed and the target is untouched.
- :func:`append_jsonl` — one record, one line, one ``write`` (flushed; ``fsync`` on request).
- :func:`read_jsonl` — the records of such a file. A line that is not a record is an error naming the file and
  the line, except a torn last line (no newline after it: a writer killed mid-write), which is dropped with a
  warning that says so (and, with ``repair``, cut from the file so that the next append starts a clean line).

Limitations
-----------
- Atomic on POSIX file systems (``os.replace``); the folder sync is skipped where the platform cannot open a
  folder.
- Records are read whole into memory (these files hold up to some thousand records).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from hwnas.errors import StoreError

__all__ = ["append_jsonl", "atomic_write", "read_jsonl"]


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())   # mkstemp makes 0600; a result file is as shareable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)
    return path


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
        The file; blank lines are skipped.
    valid : callable, optional
        A record's check (e.g. that it has the fields of a trial); a line failing it counts as unreadable.
    repair : bool
        Cut a torn last line from the file, so that the next append starts on a clean line.
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
    lines = raw.split(b"\n")   # the piece after the last newline is b"" unless the last line is torn
    records: list[Any] = []
    offset = 0
    for n, line in enumerate(lines, start=1):
        last = n == len(lines)
        if line.strip():
            try:
                rec = json.loads(line)
                ok = valid is None or bool(valid(rec))
            except (json.JSONDecodeError, UnicodeDecodeError):
                ok = False
            if last:   # no newline after it: cut short by a kill, whatever it parses to
                warnings.warn(f"{path}: line {n} is torn (a write cut short, e.g. by a kill): dropped"
                              + (" and cut from the file" if repair else ""), stacklevel=2)
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                break
            if not ok:
                raise StoreError(f"{path}: line {n} is not {what} ({line.strip()[:80]!r}); the file is corrupt: "
                                 "remove that line or start afresh")
            records.append(rec)
        offset += len(line) + 1
    return records
