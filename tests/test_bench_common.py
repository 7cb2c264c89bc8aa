"""The benchmarks' shared helpers that must not fail a long run: the disk walk (`benches/_common.py`).

`make bench-peers` once lost every figure of a run because a ClickHouse merge removed its temporary directory while
the walk was inside it; these tests make files and directories vanish at the worst moments. Nothing here is timed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benches"))
import _common  # noqa: E402


def tree(root: Path) -> int:
    """A small data directory: stable files in nested directories; returns their bytes."""
    (root / "data" / "part-1").mkdir(parents=True)
    (root / "data" / "part-1" / "a.bin").write_bytes(b"x" * 1000)
    (root / "data" / "b.bin").write_bytes(b"y" * 234)
    (root / "wal.log").write_bytes(b"z" * 10)
    return 1244


def test_counts_regular_files_only(tmp_path: Path) -> None:
    want = tree(tmp_path)
    (tmp_path / "link-to-file").symlink_to(tmp_path / "wal.log")
    (tmp_path / "link-to-dir").symlink_to(tmp_path / "data")
    os.mkfifo(tmp_path / "fifo")
    assert _common.dir_bytes(tmp_path) == want
    assert _common.dir_bytes(str(tmp_path)) == want


def test_missing_path_holds_nothing(tmp_path: Path) -> None:
    assert _common.dir_bytes(tmp_path / "never-created") == 0


def test_directory_and_file_vanishing_between_listing_and_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash's exact sequences, made to happen on purpose.

    A merge removes a temporary directory (or a file) after the walk listed its parent, before the walk reads it; or
    after the walk saw it as a directory, just before the walk enters it.
    """
    want = tree(tmp_path)
    for name, size in (("tmp_merge_1", 500), ("tmp_insert_2", 40)):
        (tmp_path / "data" / name).mkdir()
        (tmp_path / "data" / name / "c.bin").write_bytes(b"w" * size)
    (tmp_path / "data" / "vanishing.bin").write_bytes(b"v" * 70)
    real_scandir = os.scandir
    removed: list[str] = []

    def scandir_during_merges(path: Any) -> Any:
        # shutil.rmtree lists directories by file descriptor: those calls go to the real scandir.
        return real_scandir(path) if isinstance(path, int) else walked(path)

    @contextlib.contextmanager
    def walked(path: str) -> Iterator[list[os.DirEntry[str]]]:
        if Path(path).name == "tmp_insert_2" and "tmp_insert_2" not in removed:
            shutil.rmtree(path)  # seen as a directory, gone before it is listed
            removed.append("tmp_insert_2")
        with real_scandir(path) as it:
            entries = list(it)
        if Path(path) == tmp_path / "data" and "tmp_merge_1" not in removed:
            shutil.rmtree(tmp_path / "data" / "tmp_merge_1")  # listed, gone before it is stat'ed
            (tmp_path / "data" / "vanishing.bin").unlink()
            removed.append("tmp_merge_1")
        yield entries

    monkeypatch.setattr(os, "scandir", scandir_during_merges)
    assert _common.dir_bytes(tmp_path) == want
    assert sorted(removed) == ["tmp_insert_2", "tmp_merge_1"]


def test_walks_while_a_merge_churns_directories(tmp_path: Path) -> None:
    """Many walks while another thread creates and removes temporary part directories, as ClickHouse merges do."""
    want = tree(tmp_path)
    stop = threading.Event()

    def merge() -> None:
        n = 0
        while not stop.is_set():
            part = tmp_path / "data" / f"tmp_merge_{n % 3}"
            (part / "sub").mkdir(parents=True, exist_ok=True)
            for i in range(5):
                (part / "sub" / f"{i}.bin").write_bytes(b"m" * 100)
            shutil.rmtree(part, ignore_errors=True)
            n += 1

    merger = threading.Thread(target=merge, daemon=True)
    merger.start()
    try:
        sizes = [_common.dir_bytes(tmp_path) for _ in range(300)]
    finally:
        stop.set()
        merger.join()
    assert min(sizes) >= want
    assert max(sizes) <= want + 3 * 5 * 100
