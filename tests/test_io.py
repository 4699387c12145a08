"""Whole-folder outputs: never replace a folder Flagstone did not write, and clean up after killed writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import socket
from pathlib import Path

import pytest

from flagstone._io import (
    MODEL_LAYOUT,
    OUTPUT_MARKER,
    STAGING_MARKER,
    LegacyLayout,
    atomic_folder,
    check_output_folder,
    remove_orphans,
)
from flagstone.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_new_and_empty_folders_are_written(tmp_path):
    with atomic_folder(tmp_path / "new") as staging:
        _write(staging, a="1")
    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as staging:
        _write(staging, b="2")
    assert (tmp_path / "new" / "a").read_text() == "1" and (tmp_path / "empty" / "b").read_text() == "2"
    marker = json.loads((tmp_path / "new" / OUTPUT_MARKER).read_text())
    assert marker["entries"] == ["a"]
    assert not (tmp_path / "new" / STAGING_MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no staging or old copies left


def test_existing_output_needs_overwrite_and_then_is_replaced(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        _write(staging, first="1")
    with pytest.raises(DataError, match="pass --overwrite"):
        with atomic_folder(target) as staging:
            _write(staging, second="2")
    assert (target / "first").is_file()
    with atomic_folder(target, overwrite=True) as staging:
        _write(staging, second="2")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "second"]


def test_a_users_folder_is_never_replaced_even_with_overwrite(tmp_path):
    user = tmp_path / "work"
    user.mkdir()
    _write(user, **{"thesis.tex": "years of work"})
    for overwrite in (False, True):
        with pytest.raises(DataError, match="work"):
            check_output_folder(user, overwrite=overwrite)
    with pytest.raises(DataError, match="not written by Flagstone"):
        with atomic_folder(user, overwrite=True) as staging:
            _write(staging, model="x")
    assert (user / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_file_added_to_a_flagstone_folder_blocks_overwrite(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        _write(staging, model="1")
    _write(target, **{"notes.txt": "mine"})
    with pytest.raises(DataError, match=r"1 file\(s\) Flagstone did not write \(notes.txt\)"):
        check_output_folder(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"


def test_output_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        check_output_folder(tmp_path / "f", overwrite=True)
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f" / "sub", overwrite=False)


def test_legacy_layouts_count_as_written_by_flagstone(tmp_path):
    old = tmp_path / "model"
    old.mkdir()
    _write(old, **{"config.json": "{}", "model.safetensors": "", "vocab.txt": ""})
    assert check_output_folder(old, overwrite=True, legacy=MODEL_LAYOUT) == old
    _write(old, **{"thesis.tex": "x"})
    with pytest.raises(DataError):
        check_output_folder(old, overwrite=True, legacy=MODEL_LAYOUT)
    no_signature = tmp_path / "docs"
    no_signature.mkdir()
    _write(no_signature, **{"vocab.txt": "user's word list"})  # a model's file name, but no config.json
    with pytest.raises(DataError):
        check_output_folder(no_signature, overwrite=True, legacy=MODEL_LAYOUT)
    assert LegacyLayout("a", frozenset({"a", "b"})).matches({"a", "b"})


def test_a_failed_write_leaves_the_old_folder_and_nothing_else(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        _write(staging, good="1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target, overwrite=True) as staging:
            _write(staging, half="2")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "good"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    """A real kill -9 in the middle of a save, then the next save of the same path cleans up."""
    target = tmp_path / "out"
    script = (f"import time, pathlib\nfrom flagstone._io import atomic_folder\n"
              f"with atomic_folder({str(target)!r}) as staging:\n"
              f"    (staging / 'weights.bin').write_bytes(b'0' * 1_000_000)\n"
              f"    print('writing', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "writing"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert len(leftovers) == 1 and (leftovers[0] / "weights.bin").is_file()
    assert remove_orphans(target) == []  # its writer is still running: not an orphan yet
    child.send_signal(signal.SIGKILL)
    child.wait()
    with atomic_folder(target) as staging:
        _write(staging, done="1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_killed_half_way_is_undone(tmp_path):
    """Killed between moving the old folder aside and moving the new one in: the old one comes back."""
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        _write(staging, v1="1")
    aside = tmp_path / f".out.flagstone-old-{_dead_pid()}-abcd1234"
    os.replace(target, aside)
    staging = tmp_path / ".out.flagstone-tmp-xyz"
    staging.mkdir()
    (staging / STAGING_MARKER).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    removed = remove_orphans(target)
    assert removed == [staging]
    assert (target / "v1").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_writers_staging_folder_is_left_alone(tmp_path):
    staging = tmp_path / ".out.flagstone-tmp-live"
    staging.mkdir()
    (staging / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    unmarked = tmp_path / ".out.flagstone-tmp-unmarked"  # not provably ours: never removed
    unmarked.mkdir()
    assert remove_orphans(tmp_path / "out") == []
    assert staging.is_dir() and unmarked.is_dir()


def test_a_killed_file_write_leaves_a_temporary_file_the_next_write_removes(tmp_path):
    target = tmp_path / "vectors.npz"
    script = (f"import time\nfrom flagstone._io import atomic_write\n"
              f"with atomic_write({str(target)!r}, 'wb') as f:\n"
              f"    f.write(b'0' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    (tmp_path / ".vectors.npz.flagstone-tmp-notapid").write_text("unknown: kept")
    assert len(list(tmp_path.iterdir())) == 2 and not target.exists()
    from flagstone._io import atomic_write

    with atomic_write(target) as f:
        f.write("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vectors.npz.flagstone-tmp-notapid", "vectors.npz"]
