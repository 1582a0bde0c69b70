"""FUSE edge cases through a real mount (issue 9): reads past the end, zero
lengths, offsets near 2^63, unaligned O_DIRECT, unlink and rename of open
files, odd names. Each answers as a local file system would, and the agent
serves on."""

import errno
import mmap
import os

import pytest

import gcrig
from gcrig import KiB, MiB

BIG = (1 << 63) - 8192  # the largest 4 KiB-aligned offset with room for a block


def test_reads_past_the_end_and_zero_lengths(ws, make_template):
    t = make_template("templates/t.img", 4 * MiB, seed=131)
    gcrig.write_file(ws.ds("pool/d.img"), gcrig.random_bytes(MiB, 132))
    agent = ws.agent().start()
    fd = os.open(t.mnt_path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, t.size) == b""
        assert os.pread(fd, 4096, t.size - 100) == t.data[-100:]
        assert os.pread(fd, 4096, BIG) == b""
        assert os.pread(fd, 0, 0) == b""
    finally:
        os.close(fd)
    d = os.open(ws.mnt("pool/d.img"), os.O_RDWR)
    try:
        assert os.pwrite(d, b"", 12345) == 0
        assert os.fstat(d).st_size == MiB, "a zero-length write changed the size"
    finally:
        os.close(d)
    assert agent.running()


def test_a_desktop_written_near_two_to_the_63(ws):
    base = gcrig.random_bytes(MiB, 133)
    gcrig.write_file(ws.ds("pool/d.img"), base)
    agent = ws.agent().start()
    path = ws.mnt("pool/d.img")
    fd = os.open(path, os.O_RDWR)
    try:
        block = b"\xa5" * 4096
        assert os.pwrite(fd, block, BIG) == 4096
        assert os.fstat(fd).st_size == BIG + 4096
        assert os.pread(fd, 4096, BIG) == block
        assert os.pread(fd, 4096, BIG - 4096) == bytes(4096), "the hole before it is not zeros"
        assert os.pread(fd, 4096, 0) == base[:4096]
        with pytest.raises(OSError) as e:  # past the largest file size
            os.pwrite(fd, block, (1 << 63) - 1)
        assert e.value.errno in (errno.EFBIG, errno.EINVAL), e.value
        os.ftruncate(fd, MiB)
        assert os.fstat(fd).st_size == MiB
        assert os.pread(fd, 4096, BIG) == b""
    finally:
        os.close(fd)
    assert agent.running()
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def test_unaligned_o_direct_reads_return_the_right_bytes(ws, make_template):
    t = make_template("templates/t.img", 4 * MiB, seed=134)
    ws.agent().start()
    fd = os.open(t.mnt_path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 2 * MiB)
    try:
        # FUSE passes unaligned O_DIRECT requests through (no block-size
        # rule of its own): every one is served, byte-exact, short only at EOF.
        for off, n in ((1, 4096), (4095, 8192), (MiB - 7, 3 * 4096), (t.size - 5, 4096)):
            got = os.preadv(fd, [memoryview(buf)[:n]], off)
            assert got == min(n, t.size - off), f"unaligned O_DIRECT read at {off}: {got} bytes"
            assert buf[:got] == t.data[off:off + n], f"unaligned O_DIRECT read at {off}"
    finally:
        buf.close()
        os.close(fd)


def test_open_files_outlive_their_unlink_and_rename(ws):
    os.makedirs(ws.ds("iso"), exist_ok=True)
    os.makedirs(ws.ds("pool"), exist_ok=True)
    gcrig.write_file(ws.ds("iso/a.txt"), b"passthrough")
    ws.agent().start()
    # Passthrough: the datastore's own semantics.
    fd = os.open(ws.mnt("iso/a.txt"), os.O_RDONLY)
    try:
        os.rename(ws.mnt("iso/a.txt"), ws.mnt("iso/b.txt"))
        assert os.pread(fd, 100, 0) == b"passthrough"
        os.unlink(ws.mnt("iso/b.txt"))
        assert os.pread(fd, 100, 0) == b"passthrough"
    finally:
        os.close(fd)
    assert not os.path.exists(ws.ds("iso/b.txt"))
    # A host-only file in a nonpersistent area.
    p = ws.mnt("pool/scratch.bin")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"host only", 0)
        os.rename(p, ws.mnt("pool/renamed.bin"))
        os.unlink(ws.mnt("pool/renamed.bin"))
        assert os.pread(fd, 100, 0) == b"host only"
        os.pwrite(fd, b"HOST", 0)
        assert os.pread(fd, 100, 0) == b"HOST only"
    finally:
        os.close(fd)
    assert not os.path.exists(ws.mnt("pool/renamed.bin"))


@pytest.mark.parametrize("name", ["with space", "new\nline", "ünïcødé-名前", "x" * 255,
                                  "-dash", ".hidden", "tab\tname"])
def test_odd_names_in_a_passthrough_area(ws, name):
    os.makedirs(ws.ds("iso"), exist_ok=True)
    ws.agent().start()
    p = ws.mnt(os.path.join("iso", name))
    with open(p, "wb") as f:
        f.write(b"odd")
    assert name in os.listdir(ws.mnt("iso"))
    assert os.stat(p).st_size == 3
    with open(ws.ds(os.path.join("iso", name)), "rb") as f:
        assert f.read() == b"odd"
    os.unlink(p)
    assert name not in os.listdir(ws.mnt("iso"))
    with pytest.raises(OSError) as e:
        open(ws.mnt(os.path.join("iso", "y" * 256)), "wb")
    assert e.value.errno == errno.ENAMETOOLONG
