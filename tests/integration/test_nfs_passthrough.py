"""Passthrough over a real NFS datastore: goldcached --datastore nfs://... in
front of nfs-ganesha on loopback (tests/integration/nfsrig.py). Files outside
every rule (vms/, iso/) created, written, renamed and mkdir'd through the mount
are on the NFS server, checked with libnfs-utils (`nfs-cat`, `nfs-ls`, no
goldcache); unlinked through the mount, they are gone from it. Changes made on
the server show through the mount.
"""

import mmap
import subprocess
import os

import pytest

import gcrig
from gcrig import MiB


@pytest.fixture
def agent(ws, rig):
    gcrig.write_file(ws.ds("iso/readme.txt"), b"hello from the filer\n")
    os.makedirs(ws.ds("vms"))
    os.makedirs(ws.ds("templates"))
    os.makedirs(ws.ds("pool"))
    return ws.agent(datastore=rig.url()).start()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_files_created_written_renamed_through_the_mount_are_on_the_nfs_server(ws, rig, agent):
    m = ws.mnt
    assert read(m("iso/readme.txt")) == b"hello from the filer\n"

    # A small file, buffered writes.
    with open(m("vms/notes.txt"), "wb") as f:
        f.write(b"a passthrough file\n")
    # 3 MiB in 1 MiB O_DIRECT writes, as a hypervisor writes a persistent disk.
    data = gcrig.random_bytes(3 * MiB, seed=41)
    fd = os.open(m("vms/disk.img"), os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o640)
    buf = mmap.mmap(-1, MiB)
    try:
        for off in range(0, len(data), MiB):
            buf[:] = data[off:off + MiB]
            assert os.pwritev(fd, [buf], off) == MiB
        os.fsync(fd)
    finally:
        buf.close()
        os.close(fd)
    # Directories, and a file in a new one.
    os.makedirs(m("iso/linux/24.04"))
    with open(m("iso/linux/24.04/sums.txt"), "wb") as f:
        f.write(b"0123abcd  ubuntu.iso\n")

    assert gcrig.nfs_cat(rig.url("vms/notes.txt")) == b"a passthrough file\n"
    gcrig.assert_same_content(gcrig.nfs_cat(rig.url("vms/disk.img")), data,
                              "vms/disk.img over NFS")
    vms = gcrig.nfs_ls(rig.url("vms"))
    assert sorted(vms) == ["disk.img", "notes.txt"]
    assert vms["disk.img"] == ("-rw-r-----", 3 * MiB), vms
    iso = gcrig.nfs_ls(rig.url("iso"))
    assert sorted(iso) == ["linux", "readme.txt"] and iso["linux"][0].startswith("d"), iso
    assert sorted(gcrig.nfs_ls(rig.url("iso/linux"))) == ["24.04"]
    assert gcrig.nfs_cat(rig.url("iso/linux/24.04/sums.txt")) == b"0123abcd  ubuntu.iso\n"
    # And the mount reads back what it wrote.
    with gcrig.DirectReader(m("vms/disk.img")) as r:
        assert all(r.pread(off, MiB) == data[off:off + MiB] for off in range(0, 3 * MiB, MiB))

    # Rename: in a directory and across directories.
    os.rename(m("vms/notes.txt"), m("vms/readme.txt"))
    os.rename(m("vms/disk.img"), m("iso/linux/disk.img"))
    assert sorted(gcrig.nfs_ls(rig.url("vms"))) == ["readme.txt"]
    assert gcrig.nfs_cat(rig.url("vms/readme.txt")) == b"a passthrough file\n"
    assert sorted(gcrig.nfs_ls(rig.url("iso/linux"))) == ["24.04", "disk.img"]
    gcrig.assert_same_content(gcrig.nfs_cat(rig.url("iso/linux/disk.img")), data,
                              "the renamed disk over NFS")

    m1 = agent.metrics()
    assert m1.value("goldcache_datastore_write_bytes_total") >= len(data)
    assert m1.value("goldcache_datastore_metadata_ops_total", access="write") > 0

    # Unlink and rmdir through the mount: gone from the server.
    os.unlink(m("vms/readme.txt"))
    os.unlink(m("iso/linux/disk.img"))
    os.unlink(m("iso/linux/24.04/sums.txt"))
    os.rmdir(m("iso/linux/24.04"))
    assert gcrig.nfs_ls(rig.url("vms")) == {}
    assert sorted(gcrig.nfs_ls(rig.url("iso/linux"))) == []
    assert sorted(gcrig.nfs_ls(rig.url("iso"))) == ["linux", "readme.txt"]
    assert not os.path.exists(ws.ds("vms/readme.txt"))  # the export directory agrees


def test_changes_on_the_nfs_server_show_through_the_mount(ws, rig, agent, tmp_path):
    src = tmp_path / "from-filer.txt"
    src.write_bytes(b"written over NFS behind goldcache's back\n")
    r = subprocess.run(["nfs-cp", str(src), rig.url("vms/from-filer.txt")],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "from-filer.txt" in os.listdir(ws.mnt("vms"))
    assert read(ws.mnt("vms/from-filer.txt")) == b"written over NFS behind goldcache's back\n"
