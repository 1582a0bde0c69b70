"""Structural guarantee of a nonpersistent area: nothing done through the mount
changes the datastore. Operations that would change it fail with EROFS; writes,
truncates and hole punches of datastore files go to the host's overlay; files
created there are host-only. The datastore tree is byte- and metadata-identical
afterwards, and the agent's own counters say it wrote nothing there."""

import errno
import mmap
import os
import random
import subprocess

import gcrig
from gcrig import KiB, MiB

def datastore(ws):
    """pool/ with a desktop disk, a second one in a subdirectory and an empty
    subdirectory; a template beside it."""
    gcrig.write_file(ws.ds("templates/t.img"), gcrig.random_bytes(8 * MiB, seed=91))
    gcrig.write_file(ws.ds("pool/a.img"), gcrig.random_bytes(16 * MiB, seed=92))
    gcrig.write_file(ws.ds("pool/sub/c.img"), gcrig.random_bytes(2 * MiB, seed=93))
    os.makedirs(ws.ds("pool/empty"))
    os.symlink("a.img", ws.ds("pool/a-link"))


def outcome(op):
    try:
        op()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"


def test_datastore_changing_operations_in_pool_fail_with_erofs(ws):
    datastore(ws)
    before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent().start()
    m = ws.mnt
    # A host-only file, to try to move over or beside datastore entries.
    with open(m("pool/new.img"), "wb") as f:
        f.write(b"host only")

    ops = {
        "unlink datastore file": lambda: os.unlink(m("pool/a.img")),
        "unlink datastore file in subdir": lambda: os.unlink(m("pool/sub/c.img")),
        "unlink datastore symlink": lambda: os.unlink(m("pool/a-link")),
        "rename datastore file": lambda: os.rename(m("pool/a.img"), m("pool/b.img")),
        "rename datastore file into subdir": lambda: os.rename(m("pool/a.img"),
                                                               m("pool/sub/a.img")),
        "rename datastore dir": lambda: os.rename(m("pool/sub"), m("pool/sub2")),
        "rename host-only file over datastore file": lambda: os.rename(m("pool/new.img"),
                                                                       m("pool/a.img")),
        "mkdir": lambda: os.mkdir(m("pool/newdir")),
        "mkdir in subdir": lambda: os.mkdir(m("pool/sub/newdir")),
        "rmdir empty dir": lambda: os.rmdir(m("pool/empty")),
        "rmdir non-empty dir": lambda: os.rmdir(m("pool/sub")),
        "symlink": lambda: os.symlink("a.img", m("pool/l")),
        "link datastore file": lambda: os.link(m("pool/a.img"), m("pool/h")),
        "link host-only file": lambda: os.link(m("pool/new.img"), m("pool/h2")),
        "truncate closed datastore file": lambda: os.truncate(m("pool/a.img"), 4096),
        "truncate closed datastore file to 0": lambda: os.truncate(m("pool/sub/c.img"), 0),
        "chmod datastore file": lambda: os.chmod(m("pool/a.img"), 0o600),
        "utime datastore file": lambda: os.utime(m("pool/a.img"), (1, 1)),
        "chmod datastore dir": lambda: os.chmod(m("pool/sub"), 0o700),
    }
    got = {name: outcome(op) for name, op in ops.items()}
    assert got == {name: "EROFS" for name in ops}

    # Nothing above changed the view either.
    assert sorted(os.listdir(m("pool"))) == ["a-link", "a.img", "empty", "new.img", "sub"]
    assert sorted(os.listdir(m("pool/sub"))) == ["c.img"]
    assert os.stat(m("pool/a.img")).st_size == 16 * MiB
    assert os.stat(m("pool/sub/c.img")).st_size == 2 * MiB
    assert agent.metrics().value("goldcache_readonly_refusals_total") >= len(ops)

    assert gcrig.tree_snapshot(ws.datastore) == before, "the datastore tree changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def read_back(fd, size):
    buf = mmap.mmap(-1, MiB)
    out = bytearray()
    try:
        while len(out) < size:
            n = os.preadv(fd, [buf], len(out))
            if n == 0:
                break
            out += buf[:n]
    finally:
        buf.close()
    return bytes(out)


def test_mixed_activity_leaves_the_datastore_tree_identical(ws):
    datastore(ws)
    before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent().start()
    m = ws.mnt
    rnd = random.Random(1234)

    # A datastore file, held open (the VM runs) while it is written, truncated,
    # extended, punched and zeroed; checked against a model throughout.
    with open(ws.ds("pool/a.img"), "rb") as f:
        model = gcrig.DiskModel(f.read())
    fd = os.open(m("pool/a.img"), os.O_RDWR)
    dfd = os.open(m("pool/a.img"), os.O_RDWR | os.O_DIRECT)
    abuf = mmap.mmap(-1, MiB)
    try:
        for i in range(200):
            kind = rnd.choice(["write", "write", "write", "direct", "punch", "zero", "truncate"])
            size = len(model)
            if kind == "write":
                off, n = rnd.randrange(0, size + 64 * KiB), rnd.randrange(1, 256 * KiB)
                buf = rnd.randbytes(n)
                assert os.pwrite(fd, buf, off) == n
                model.write(off, buf)
            elif kind == "direct":
                off = 4 * KiB * rnd.randrange(0, size // (4 * KiB))
                n = 4 * KiB * rnd.randrange(1, 257)
                abuf[:n] = rnd.randbytes(n)
                assert os.pwritev(dfd, [memoryview(abuf)[:n]], off) == n
                model.write(off, abuf[:n])
            elif kind in ("punch", "zero"):
                off, n = rnd.randrange(0, size), rnd.randrange(1, MiB)
                mode = (gcrig.FALLOC_FL_PUNCH_HOLE | gcrig.FALLOC_FL_KEEP_SIZE if kind == "punch"
                        else gcrig.FALLOC_FL_ZERO_RANGE | gcrig.FALLOC_FL_KEEP_SIZE)
                gcrig.fallocate(fd, mode, off, n)
                model.zero(off, n)
            else:
                new = rnd.randrange(8 * MiB, 24 * MiB)
                os.ftruncate(fd, new)
                model.truncate(new)
            if i % 25 == 24:
                assert os.fstat(fd).st_size == len(model)
                gcrig.assert_same_content(read_back(fd, len(model) + MiB), bytes(model),
                                          f"pool/a.img after {i + 1} operations")
        # Other processes on the open file: util-linux fallocate punches a hole,
        # truncate(1) extends by path (the file is open, so this is the
        # overlay's), posix_fallocate extends.
        r = subprocess.run(["fallocate", "-p", "-o", str(MiB), "-l", str(2 * MiB),
                            m("pool/a.img")], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        model.zero(MiB, 2 * MiB)
        os.truncate(m("pool/a.img"), 30 * MiB)
        model.truncate(30 * MiB)
        os.posix_fallocate(fd, 30 * MiB, 2 * MiB)
        model.truncate(32 * MiB)
        gcrig.assert_same_content(read_back(fd, 40 * MiB), bytes(model), "pool/a.img")
        assert os.stat(m("pool/a.img")).st_size == 32 * MiB
    finally:
        abuf.close()
        os.close(dfd)
        os.close(fd)

    # A datastore file in a subdirectory, written through a short-lived handle.
    with open(m("pool/sub/c.img"), "r+b") as f:
        f.seek(12345)
        f.write(b"desktop data" * 1000)
    subprocess.run(["fallocate", "-p", "-o", "0", "-l", "64KiB", m("pool/sub/c.img")],
                   check=True)

    # Host-only files: create, write, rename, unlink; one is left behind.
    for i in range(5):
        with open(m(f"pool/h{i}.tmp"), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(1, 3 * MiB)))
    os.rename(m("pool/h0.tmp"), m("pool/sub/h0.img"))
    os.rename(m("pool/h1.tmp"), m("pool/h1.img"))
    os.truncate(m("pool/h1.img"), 100)
    with open(m("pool/h2.tmp"), "r+b") as f:
        gcrig.fallocate(f.fileno(), gcrig.FALLOC_FL_PUNCH_HOLE | gcrig.FALLOC_FL_KEEP_SIZE, 0, 4096)
    for name in ("pool/h2.tmp", "pool/h3.tmp", "pool/sub/h0.img"):
        os.unlink(m(name))
    os.rename(m("pool/h4.tmp"), m("pool/h4.tmp.renamed"))
    assert sorted(os.listdir(m("pool"))) == ["a-link", "a.img", "empty", "h1.img",
                                             "h4.tmp.renamed", "sub"]
    assert sorted(os.listdir(m("pool/sub"))) == ["c.img"]
    with open(m("pool/h1.img"), "rb") as f:
        assert len(f.read()) == 100
    host_only = {p for p, d in agent.desktops().items() if d["host_only"]}
    assert host_only == {"pool/h1.img", "pool/h4.tmp.renamed"}

    # Template reads beside it all.
    with open(ws.ds("templates/t.img"), "rb") as f:
        gcrig.assert_same_content(gcrig.read_all_direct(m("templates/t.img"), 8 * MiB), f.read(),
                                  "template")

    # Every handle of the datastore files is closed: their overlays are gone
    # and they read as the datastore again.
    gcrig.wait_until(lambda: not {"pool/a.img", "pool/sub/c.img"} & set(agent.desktops()),
                     "the overlays of a.img and c.img are discarded")
    for rel in ("pool/a.img", "pool/sub/c.img"):
        with open(ws.ds(rel), "rb") as f:
            gcrig.assert_same_content(gcrig.read_all_direct(m(rel), 32 * MiB), f.read(), rel)

    assert gcrig.tree_snapshot(ws.datastore) == before, "the datastore tree changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
