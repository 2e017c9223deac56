"""hwnas.files: atomic writes and JSON-lines records (a torn last line dropped and said, any other bad line an
error naming file and line)."""

from __future__ import annotations

import os
import stat

import pytest

from hwnas.errors import StoreError
from hwnas.files import append_jsonl, atomic_path, atomic_write, copy_tree, parse_jsonl, read_jsonl


def test_atomic_write_text_bytes_and_writer(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    assert atomic_write(path, "héllo") == path and path.read_text(encoding="utf-8") == "héllo"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, lambda f: f.write(b"by writer"))
    assert path.read_bytes() == b"by writer"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, boom)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_replaces_on_success_and_leaves_the_target_on_failure(tmp_path):
    path = tmp_path / "sub" / "m.bin"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.is_file() and not path.exists()
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["m.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ValueError, match="parity"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"bad")
            raise ValueError("parity check failed")
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["m.bin"]


def test_copy_tree_replaces_a_folder_whole_and_cleans_up_on_failure(tmp_path, monkeypatch):
    src, dest = tmp_path / "src", tmp_path / "reg" / "p"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("new")
    (src / "sub" / "b.npz").write_bytes(b"\x01")
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    assert copy_tree(src, dest) == dest
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["a.json", "sub", "sub/b.npz"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["p"]   # no temporary or old folder left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("shutil.copytree", broken)
    with pytest.raises(OSError, match="disk full"):
        copy_tree(src, dest)
    assert (dest / "a.json").read_text() == "new" and sorted(p.name for p in dest.parent.iterdir()) == ["p"]


def test_jsonl_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": float("nan")}, fsync=True)
    recs = read_jsonl(path)
    assert recs[0] == {"a": 1} and recs[1]["a"] != recs[1]["a"]


def test_a_gzip_store_is_read_but_never_repaired(tmp_path):
    import gzip

    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="cannot be repaired"):
        read_jsonl(path, repair=True)
    path.write_bytes(gzip.compress(b'{"a": 1}\nnot json\n'))
    with pytest.raises(StoreError, match="line 2"):
        read_jsonl(path)


def test_a_torn_last_line_is_dropped_with_a_warning_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    with pytest.warns(UserWarning, match=r"r.jsonl: line 3 is torn .*dropped$"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    with pytest.warns(UserWarning, match="cut from the file"):
        read_jsonl(path, repair=True)
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2}')   # valid JSON but no newline: the write did not finish
    with pytest.warns(UserWarning, match="line 2 is torn"):
        assert read_jsonl(path) == [{"a": 1}]


def test_a_corrupt_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(StoreError, match=r"r.jsonl: line 2 is not a JSON record"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"b": 2}\n')
    with pytest.raises(StoreError, match="line 2 is not a row"):
        read_jsonl(path, valid=lambda r: "a" in r, what="a row")


def test_parse_jsonl_gives_the_records_where_the_complete_lines_end_and_a_torn_tail():
    assert parse_jsonl(b'{"a": 1}\n\n{"a": 2}\n', "x") == ([{"a": 1}, {"a": 2}], 19, False)
    assert parse_jsonl(b'{"a": 1}\n{"a": 2', "x") == ([{"a": 1}], 9, True)
    assert parse_jsonl(b'{"a": 1}\n  ', "x") == ([{"a": 1}], 9, False)   # a blank tail is no record
    assert parse_jsonl(b"", "x") == ([], 0, False)
    with pytest.raises(StoreError, match=r"^store s: line 2 is not a JSON object .*corrupt at line 2"):
        parse_jsonl(b'{"a": 1}\n[1]\n', "store s", valid=lambda r: isinstance(r, dict), what="a JSON object")
    with pytest.raises(StoreError, match="line 1 is not a JSON record"):
        parse_jsonl(b"\xff\xfe\n", "x")
