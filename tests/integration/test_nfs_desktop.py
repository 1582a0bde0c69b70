"""Nonpersistent desktops over a real NFS datastore: goldcached --datastore
nfs://... in front of nfs-ganesha on loopback (tests/integration/nfsrig.py).

A desktop writes through the mount (O_DIRECT writes, a truncate that extends
the disk) and reads its own data back; meanwhile the disk read over NFS
directly, with `nfs-cat` from libnfs-utils (no goldcache), is byte-identical
to what was provisioned, and the agent counted no write to the datastore.
The same for the usual VDI layout, a qcow2 linked clone of a template driven
by qemu-io -t none.
"""

import hashlib
import mmap
import os
import shutil

import pytest

import gcrig
from gcrig import KiB, MiB

DISK = "pool/vm1.img"
DISK_SIZE = 64 * MiB
EXTENDED = 80 * MiB


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def over_nfs(rig, rel):
    """sha256 and size of `rel` read over NFS directly (nfs-cat)."""
    data = gcrig.nfs_cat(rig.url(rel))
    return sha256(data), len(data)


def test_desktop_writes_over_nfs_leave_the_file_on_the_filer_unchanged(ws, rig):
    original = gcrig.random_bytes(DISK_SIZE, seed=31)
    gcrig.write_file(ws.ds(DISK), original)
    provisioned = over_nfs(rig, DISK)
    assert provisioned == (sha256(original), DISK_SIZE)
    agent = ws.agent(datastore=rig.url()).start()

    expect = bytearray(original)
    writes = [(MiB, bytes([0x5A]) * (2 * MiB)),                  # 2 MiB of a pattern
              (40 * MiB + 4 * KiB, bytes([0xA5]) * (512 * KiB)),  # unaligned to chunks
              (DISK_SIZE - MiB, gcrig.random_bytes(MiB, seed=32))]  # the last MiB
    extension = gcrig.random_bytes(MiB, seed=33)
    fd = os.open(ws.mnt(DISK), os.O_RDWR | os.O_DIRECT)  # the VM runs: its disk is open
    buf = mmap.mmap(-1, 2 * MiB)
    try:
        for off, data in writes:
            buf[:len(data)] = data
            assert os.pwritev(fd, [memoryview(buf)[:len(data)]], off) == len(data)
            expect[off:off + len(data)] = data
        os.ftruncate(fd, EXTENDED)  # the desktop grows its disk
        expect += bytes(EXTENDED - DISK_SIZE)
        buf[:MiB] = extension
        assert os.pwritev(fd, [memoryview(buf)[:MiB]], 72 * MiB) == MiB
        expect[72 * MiB:73 * MiB] = extension
        written = sum(len(d) for _, d in writes) + MiB

        assert os.fstat(fd).st_size == EXTENDED
        gcrig.assert_same_content(gcrig.read_all_direct(ws.mnt(DISK), EXTENDED), bytes(expect),
                                  "the desktop's disk read back through the mount")
        assert agent.desktops()[DISK]["open_handles"] >= 1

        # While the desktop runs, the filer still has the provisioned disk.
        assert over_nfs(rig, DISK) == provisioned, "the disk changed on the NFS server"
        assert gcrig.nfs_ls(rig.url("pool"))[DISK.split("/")[1]][1] == DISK_SIZE
    finally:
        buf.close()
        os.close(fd)
    print(f"desktop wrote {written // KiB} KiB and extended its disk to {EXTENDED // MiB} MiB; "
          f"nfs-cat sha256 unchanged")

    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
    # Shut down (last close): the writes are discarded; the disk reads as provisioned.
    assert gcrig.wait_desktop_closed(agent, DISK) is None, agent.desktops()
    gcrig.assert_same_content(gcrig.read_all_direct(ws.mnt(DISK), DISK_SIZE), original,
                              "the disk after the desktop shut down")
    assert over_nfs(rig, DISK) == provisioned
    assert gcrig.sha256_file(ws.ds(DISK)) == provisioned[0]
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


# The qcow2 linked clone: the template starts with 4 MiB of 0xab.
TEMPLATE = "templates/t.img"
CLONE = "pool/vm1.qcow2"
AB_BYTES = 4 * MiB


def qemu_io(path, *commands, readonly=False):
    r = gcrig.qemu_io(path, *commands, readonly=readonly)
    return gcrig.qemu_io_ok(r), r.stdout


def test_qcow2_linked_clone_over_nfs_writes_stay_on_the_host(ws, rig):
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not installed (package qemu-utils)")
    template = bytes([0xAB]) * AB_BYTES + gcrig.random_bytes(60 * MiB, seed=34)
    gcrig.write_file(ws.ds(TEMPLATE), template)
    os.makedirs(ws.ds("pool"))
    # Provisioning, as a VDI broker does it: on the filer, not through goldcache.
    r = gcrig.run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "../templates/t.img",
             "vm1.qcow2"], cwd=ws.ds("pool"))
    assert r.returncode == 0, r.stdout
    clone_before = over_nfs(rig, CLONE)
    agent = ws.agent(datastore=rig.url()).start()
    clone = ws.mnt(CLONE)

    vm = os.open(clone, os.O_RDONLY)  # the VM runs: the desktop stays open across qemu-io runs
    try:
        ok, out = qemu_io(clone, "read -P 0xab 0 1M",         # boot: template blocks
                          "write -P 0x5a 1M 2M",              # the desktop's own writes
                          "read -P 0x5a 1M 2M", "read -P 0xab 3M 1M",
                          "write -P 0x33 40M 1M", "read -P 0x33 40M 1M")
        assert ok, out
        assert "wrote 2097152/2097152 bytes at offset 1048576" in out, out
        ok, out = qemu_io(clone, "read -P 0x5a 1M 2M", "read -P 0x33 40M 1M",
                          "read -P 0xab 0 1M", readonly=True)
        assert ok, f"a second open of the running desktop lost its writes:\n{out}"
        r = gcrig.run_tool(["qemu-img", "check", clone])
        assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout

        assert over_nfs(rig, CLONE) == clone_before, "the clone changed on the NFS server"
        assert over_nfs(rig, TEMPLATE) == (sha256(template), len(template))
    finally:
        os.close(vm)
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES

    assert gcrig.wait_desktop_closed(agent, CLONE) is None, agent.desktops()
    ok, out = qemu_io(clone, f"read -P 0xab 0 {AB_BYTES // MiB}M", readonly=True)
    assert ok, f"after the last close the clone should read as the template:\n{out}"
    assert over_nfs(rig, CLONE) == clone_before
    assert sorted(gcrig.nfs_ls(rig.url("pool"))) == ["vm1.qcow2"]
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
