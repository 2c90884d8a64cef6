"""pvtv2_fast._atomic: the two-rename fallback (systems without an atomic exchange), its interrupted state and its
recovery, atomic text files; the exchange path itself is covered by tests/test_save_crash.py."""

import os

import pytest

from pvtv2_fast import _atomic


def _folder(path, files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _hidden(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_replace_folder_swaps_and_keeps_selected_files(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "t", {"weights": "old", "notes": "mine"})
    with _atomic.replace_folder(target, keep=lambda name: name != "weights") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".t" + _atomic.STAGING_TAG)
        (staging / "weights").write_text("new")
        assert (target / "weights").read_text() == "old"  # untouched until the swap
    assert {p.name: p.read_text() for p in target.iterdir()} == {"weights": "new", "notes": "mine"}
    assert _hidden(tmp_path) == []


def test_exception_leaves_the_old_folder(tmp_path):
    target = _folder(tmp_path / "t", {"weights": "old"})
    with pytest.raises(RuntimeError):
        with _atomic.replace_folder(target) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old" and _hidden(tmp_path) == []


def test_new_folder_and_permissions(tmp_path):
    target = tmp_path / "a" / "b"
    with _atomic.replace_folder(target) as staging:
        (staging / "f").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (target / "f").read_text() == "x" and target.stat().st_mode & 0o777 == 0o777 & ~umask


def test_interrupted_two_rename_swap_is_readable_and_restored(tmp_path):
    """A crash between `target → backup` and `staging → target`: no target, a complete backup."""
    target = _folder(tmp_path / "t", {"weights": "old"})
    backup = tmp_path / f".t{_atomic.BACKUP_TAG}{os.getpid()}-deadbeef"
    os.rename(target, backup)
    dead_staging = _folder(tmp_path / f".t{_atomic.STAGING_TAG}999999999-cafe", {"weights": "new"})
    assert _atomic.interrupted_backup(target) == backup
    from pvtv2_fast.hub import resolve_folder

    assert resolve_folder(target) == backup  # loaders read the previous version
    with _atomic.replace_folder(target, keep=lambda name: name != "weights") as staging:
        assert (target / "weights").read_text() == "old"  # restored before the new save
        (staging / "weights").write_text("newer")
    assert (target / "weights").read_text() == "newer"
    assert not dead_staging.exists() and _hidden(tmp_path) == []


def test_live_writers_staging_is_left_alone(tmp_path):
    target = _folder(tmp_path / "t", {"w": "old"})
    live = _folder(tmp_path / f".t{_atomic.STAGING_TAG}{os.getpid()}-0000", {})
    with _atomic.replace_folder(target) as staging:
        (staging / "w").write_text("new")
    assert live.exists()


def test_write_text_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text("old")
    _atomic.write_text_atomic(path, "new")
    assert path.read_text() == "new" and _hidden(tmp_path) == []

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        _atomic.write_text_atomic(path, "newer")
    assert path.read_text() == "new" and _hidden(tmp_path) == []


def test_file_target_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        with _atomic.replace_folder(tmp_path / "f"):
            pass


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_swap_that_fails_changes_nothing(tmp_path, monkeypatch, exchange):
    """EBUSY and the like (a mount point cannot be renamed): a clear error, the old folder, no leftovers."""
    import errno

    target = _folder(tmp_path / "t", {"w": "old"})
    real_rename = os.rename

    def busy(*args):
        raise OSError(errno.EBUSY, "Device or resource busy")

    def rename(src, dst):
        if _atomic.STAGING_TAG in os.fspath(src):  # the new folder cannot take the target's place
            busy()
        real_rename(src, dst)

    monkeypatch.setattr(_atomic, "_exchange", busy if exchange else (lambda a, b: False))
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="mount point"):
        with _atomic.replace_folder(target) as staging:
            (staging / "w").write_text("new")
    assert (target / "w").read_text() == "old" and _hidden(tmp_path) == []
