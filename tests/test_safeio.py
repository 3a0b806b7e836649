"""rnnexport.safeio: reads that refuse anything but a small regular file, strict JSON, bounded names,
and the folder exchange a build publishes with. Expected messages and values are written here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rnnexport.errors import UsageError
from rnnexport.safeio import check_path, exchange, file_kind, loads_strict, read_bounded


def test_read_bounded_refuses_everything_but_a_small_regular_file(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"12345")
    assert read_bounded(tmp_path / "ok", limit=5, what="the file") == b"12345"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with (tmp_path / "sparse").open("wb") as handle:
        handle.truncate(10 << 30)
    cases = {
        tmp_path / "fifo": "is a FIFO (named pipe); expected a regular file",
        tmp_path / "link": "is a symbolic link; expected a regular file",
        tmp_path: "is a folder; expected a regular file",
        Path("/dev/zero"): "is a character device; expected a regular file",
        tmp_path / "sparse": "is 10,737,418,240 bytes; the limit is 1,024 bytes",
        tmp_path / "missing": "No such file or directory (ENOENT)",
        tmp_path / ("n" * 256): "has a path component of 256 bytes",
    }
    for path, expected in cases.items():
        with pytest.raises(UsageError) as info:
            read_bounded(path, limit=1024, what="the file")
        assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, "a": 2}', "the key 'a' appears twice in one object"),
        ('{"format": 1e999}', "the number 1e999 is out of range"),
        ('{"x": NaN}', "NaN is not a JSON number"),
        ('{"x": -Infinity}', "-Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep; at most 64 are accepted"),
        ('{"s": "' + "[" * 1000 + '"}', None),  # brackets in strings do not count
        ('{"a": [1, 2', "is not valid JSON"),
        (b'{"a": "\xff"}', "is not UTF-8 text"),
        ("1" * 5000, "is not valid JSON"),  # Python's limit on integer digits
    ],
)
def test_strict_json(text: str | bytes, expected: str | None) -> None:
    if expected is None:
        assert loads_strict(text, what="doc") == {"s": "[" * 1000}
        return
    with pytest.raises(UsageError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        loads_strict(text, what="doc")


def test_a_regular_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes, exactly the limit
    (tmp_path / "data.bin").write_bytes(data)
    assert read_bounded(tmp_path / "data.bin", limit=10_240, what="the data") == data
    with pytest.raises(UsageError, match="is 10,240 bytes; the limit is 10,239 bytes"):
        read_bounded(tmp_path / "data.bin", limit=10_239, what="the data")


def test_a_link_is_refused_even_when_its_target_is_a_small_file(tmp_path: Path) -> None:
    (tmp_path / "target.json").write_text("{}")
    (tmp_path / "manifest.json").symlink_to("target.json")
    with pytest.raises(UsageError, match="is a symbolic link; expected a regular file"):
        read_bounded(tmp_path / "manifest.json", limit=1024, what="the manifest")


def test_file_kind_names_each_kind(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to("file")
    assert file_kind(os.lstat(tmp_path / "fifo").st_mode) == "a FIFO (named pipe)"
    assert file_kind(os.lstat(tmp_path / "file").st_mode) == "a regular file"
    assert file_kind(os.lstat(tmp_path / "link").st_mode) == "a symbolic link"
    assert file_kind(os.lstat(tmp_path).st_mode) == "a folder"
    assert file_kind(os.lstat("/dev/null").st_mode) == "a character device"


def test_check_path_refuses_names_and_paths_the_os_would_refuse(tmp_path: Path) -> None:
    assert check_path(tmp_path / ("n" * 255), what="--out") == tmp_path / ("n" * 255)
    with pytest.raises(UsageError, match="has a path component of 256 bytes; file systems allow at most 255"):
        check_path(tmp_path / ("n" * 256), what="--out")
    # 'é' is two bytes in UTF-8: 128 of them are 256 bytes though only 128 characters.
    with pytest.raises(UsageError, match="has a path component of 256 bytes"):
        check_path(tmp_path / ("é" * 128), what="--out")
    deep = Path("/" + "/".join(["d" * 200] * 21))  # 21 * 201 = 4,221 bytes
    with pytest.raises(UsageError, match="is a path of 4221 bytes; the limit is 4095"):
        check_path(deep, what="--out")


def test_strict_json_reads_what_it_accepts_exactly() -> None:
    assert loads_strict('{"a": [1, 2.5, "x", null, true], "b": {}}', what="doc") == {
        "a": [1, 2.5, "x", None, True],
        "b": {},
    }


def test_exchange_swaps_two_folders_or_leaves_both(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "model.onnx").write_bytes(b"new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.onnx").write_bytes(b"old")
    swapped = exchange(tmp_path / "new", tmp_path / "old")
    expected = (b"old", b"new") if swapped else (b"new", b"old")
    assert (
        (tmp_path / "new" / "model.onnx").read_bytes(),
        (tmp_path / "old" / "model.onnx").read_bytes(),
    ) == (expected)
