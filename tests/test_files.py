"""pvd._files: atomic outputs appear whole on success, leave nothing behind on failure, and respect overwrite."""

from __future__ import annotations

import os
import stat

import pytest

from pvd._files import OutputExistsError, atomic_dir, atomic_file


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umasked(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def test_atomic_file_renames_on_success_with_default_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_file(target) as temporary:
        assert temporary.parent == target.parent and temporary.name != target.name
        assert not target.exists()  # nothing visible under the final name while writing
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert _mode(target) == _umasked(0o666)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_file_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_file_without_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="already exists"), atomic_file(target, overwrite=False) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_replaces_only_with_overwrite(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as temporary:
        (temporary / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first" and _mode(target) == _umasked(0o777)
    with pytest.raises(OutputExistsError, match="already exists"), atomic_dir(target) as temporary:
        (temporary / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_dir(target, overwrite=True) as temporary:
        (temporary / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the replaced folder and temporaries are gone


def test_atomic_dir_failure_removes_the_temporary_and_keeps_the_old(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_dir(target, overwrite=True) as temporary:
        (temporary / "part.txt").write_text("half")
        raise OSError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """SIGKILL leaves temporaries behind; the next write of the same output removes those of dead processes
    (and only those: a live process's temporary, or another output's, stays)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    target = tmp_path / "out.png"
    stale_file = tmp_path / f".out.png.pvd-{dead_pid}-tmpab12.png"
    stale_dir = tmp_path / f".out.png.pvd-{dead_pid}-tmpcd34"
    live = tmp_path / f".out.png.pvd-{live_pid}-tmpef56.png"
    other = tmp_path / f".other.png.pvd-{dead_pid}-tmpgh78.png"
    stale_file.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "0001.png").write_bytes(b"partial")
    for path in (live, other):
        path.write_bytes(b"x")
    with atomic_file(target) as temporary:
        assert f".pvd-{os.getpid()}-" in temporary.name  # the writer's own id, for the next run to judge
        temporary.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()
    with atomic_dir(tmp_path / "folder") as temporary:
        assert f".pvd-{os.getpid()}-" in temporary.name
