"""Passthrough: files outside every rule behave like the datastore itself."""

import mmap
import os
import stat

import pytest

import gcrig
from gcrig import KiB, MiB


@pytest.fixture
def agent(ws):
    gcrig.write_file(ws.ds("vms/persistent/disk.img"), gcrig.random_bytes(2 * MiB, seed=61))
    gcrig.write_file(ws.ds("iso/readme.txt"), b"hello from the datastore\n")
    return ws.agent().start()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_existing_files_and_directories_are_visible(ws, agent):
    assert sorted(os.listdir(ws.mountpoint)) == sorted(os.listdir(ws.datastore))
    assert read(ws.mnt("iso/readme.txt")) == b"hello from the datastore\n"
    gcrig.assert_same_content(read(ws.mnt("vms/persistent/disk.img")),
                              read(ws.ds("vms/persistent/disk.img")), "disk.img")
    assert os.stat(ws.mnt("vms/persistent/disk.img")).st_size == 2 * MiB


def test_create_write_read_reaches_datastore(ws, agent):
    data = gcrig.random_bytes(3 * MiB + 17, seed=62)
    with open(ws.mnt("vms/new.img"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert read(ws.ds("vms/new.img")) == data
    assert read(ws.mnt("vms/new.img")) == data
    assert os.stat(ws.mnt("vms/new.img")).st_size == len(data)
    m = agent.metrics()
    assert m.value("goldcache_datastore_write_bytes_total") >= len(data)


def test_overwrite_in_place_and_truncate_reach_datastore(ws, agent):
    path = ws.mnt("vms/persistent/disk.img")
    expect = bytearray(read(ws.ds("vms/persistent/disk.img")))
    patch = b"\x5a" * (64 * KiB)
    with open(path, "r+b") as f:
        f.seek(MiB - 100)
        f.write(patch)
    expect[MiB - 100:MiB - 100 + len(patch)] = patch
    assert read(ws.ds("vms/persistent/disk.img")) == bytes(expect)

    os.truncate(path, MiB)
    assert os.stat(ws.ds("vms/persistent/disk.img")).st_size == MiB
    assert read(path) == bytes(expect[:MiB])


def test_odirect_write_and_read_reach_datastore(ws, agent):
    data = gcrig.random_bytes(MiB, seed=63)
    path = ws.mnt("vms/direct.img")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    buf = mmap.mmap(-1, MiB)
    try:
        buf[:] = data
        assert os.pwritev(fd, [buf], 0) == MiB
    finally:
        buf.close()
        os.close(fd)
    assert read(ws.ds("vms/direct.img")) == data
    with gcrig.DirectReader(path) as r:
        assert r.pread(0, MiB) == data


def test_changes_on_datastore_show_through_mount(ws, agent):
    gcrig.write_file(ws.ds("vms/from_filer.txt"), b"written behind our back")
    assert read(ws.mnt("vms/from_filer.txt")) == b"written behind our back"
    assert "from_filer.txt" in os.listdir(ws.mnt("vms"))


def test_rename_and_unlink_reach_datastore(ws, agent):
    with open(ws.mnt("vms/a.txt"), "wb") as f:
        f.write(b"a")
    os.rename(ws.mnt("vms/a.txt"), ws.mnt("vms/b.txt"))
    assert not os.path.exists(ws.ds("vms/a.txt"))
    assert read(ws.ds("vms/b.txt")) == b"a"
    assert read(ws.mnt("vms/b.txt")) == b"a"
    with pytest.raises(FileNotFoundError):
        os.stat(ws.mnt("vms/a.txt"))

    os.unlink(ws.mnt("vms/b.txt"))
    assert not os.path.exists(ws.ds("vms/b.txt"))
    with pytest.raises(FileNotFoundError):
        os.stat(ws.mnt("vms/b.txt"))


def test_mkdir_and_rmdir_reach_datastore(ws, agent):
    os.mkdir(ws.mnt("vms/newdir"), 0o750)
    assert stat.S_ISDIR(os.stat(ws.ds("vms/newdir")).st_mode)
    os.makedirs(ws.mnt("vms/newdir/sub/deeper"))
    assert os.path.isdir(ws.ds("vms/newdir/sub/deeper"))
    assert os.listdir(ws.mnt("vms/newdir")) == ["sub"]

    with pytest.raises(OSError):
        os.rmdir(ws.mnt("vms/newdir"))  # not empty
    os.rmdir(ws.mnt("vms/newdir/sub/deeper"))
    os.rmdir(ws.mnt("vms/newdir/sub"))
    os.rmdir(ws.mnt("vms/newdir"))
    assert not os.path.exists(ws.ds("vms/newdir"))


def test_symlink_and_chmod_reach_datastore(ws, agent):
    os.symlink("persistent/disk.img", ws.mnt("vms/link.img"))
    assert os.readlink(ws.ds("vms/link.img")) == "persistent/disk.img"
    assert os.readlink(ws.mnt("vms/link.img")) == "persistent/disk.img"
    os.chmod(ws.mnt("vms/persistent/disk.img"), 0o600)
    assert stat.S_IMODE(os.stat(ws.ds("vms/persistent/disk.img")).st_mode) == 0o600

