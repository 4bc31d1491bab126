"""The atomic writer's temporaries and file modes (issue 21, items 4 and 8)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scratchvae import atomic


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_temporary_is_named_with_the_marker_the_machine_and_the_process(tmp_path):
    seen = []
    with atomic.atomic_write(tmp_path / "a.txt") as f:
        seen = [p.name for p in tmp_path.iterdir()]
        f.write(b"x")
    assert len(seen) == 1 and atomic.TEMPORARY.match(seen[0])
    assert seen[0].startswith(f".a.txt.scratchvae-{atomic.HOST}-{os.getpid()}-")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("name", [
    ".thesis.tex.draft001.part",                       # the user's file a loose pattern deleted
    ".notes.part", ".a.12345-abcd1234.part", ".a.abcd1234.part",           # older scratchvae's, ambiguous
    ".a.scratchvae-0123abcd-{dead}-abcd1234.part",     # another machine's
    ".a.scratchvae-{host}-{dead}-abcd1234.part.bak", ".a.scratchvae-{host}-{dead}-abcd123.part",
    ".a.scratchvae-{host}-{live}-abcd1234.part",        # a process that still runs
])
def test_only_this_machines_temporaries_of_gone_processes_are_removed(tmp_path, name):
    name = name.format(host=atomic.HOST, dead=_dead_pid(), live=os.getpid())
    (tmp_path / name).write_bytes(b"keep")
    stale = f".b.npz.scratchvae-{atomic.HOST}-{_dead_pid()}-q1w2e3r4.part"
    (tmp_path / stale).write_bytes(b"gone")
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("proc", [True, False])
@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002, 0o000])
def test_a_new_file_gets_the_umask(tmp_path, monkeypatch, mask, proc):
    if not proc:                                  # the fallback where /proc does not say
        monkeypatch.setattr(atomic, "PROC_STATUS", str(tmp_path / "no-such-file"))
    old = os.umask(mask)
    try:
        assert atomic.current_umask() == mask
        atomic.write_bytes(tmp_path / "f", b"x")
        assert os.umask(mask) == mask             # the umask is as it was
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o444, 0o755])
def test_a_replaced_file_keeps_its_mode(tmp_path, mode):
    (tmp_path / "f").write_bytes(b"old")
    (tmp_path / "f").chmod(mode)
    old = os.umask(0o077)
    try:
        atomic.write_bytes(tmp_path / "f", b"new")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"new"
    assert (tmp_path / "f").stat().st_mode & 0o777 == mode
