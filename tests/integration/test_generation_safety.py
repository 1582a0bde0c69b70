"""Never a wrong byte across template generations (design invariant 1, §3
"template"): a template rewritten in place while desktops read it, and old and
new generations open at once through the kernel's page cache."""

import os
import random
import threading
import time

import gcrig
from gcrig import MiB

SIZE = 32 * MiB
REWRITE_SIZE = 128 * MiB  # one pwrite of it takes long enough for opens to land inside
SETTLE_S = 2.0


def settled(path, settle_s=SETTLE_S):
    """Waits until the datastore file's ctime and mtime are `settle_s` old."""
    st = os.stat(path)
    changed = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    while time.time() < changed + settle_s + 0.05:
        time.sleep(0.05)


def read_buffered(path):
    with open(path, "rb") as f:
        return f.read()


def test_in_place_rewrite_during_reads_never_leaves_torn_chunks_cached(ws, make_template):
    size = REWRITE_SIZE
    t = make_template("templates/win11.img", size, seed=71)
    agent = ws.agent(settle=f"{SETTLE_S}s").start()
    settled(t.ds_path)
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), t.data, "before")

    contents = [t.data]
    for round_ in range(3):
        new = gcrig.random_bytes(size, seed=72 + round_)
        stop = threading.Event()

        def reader(seed):
            # Fresh opens, each reading a few chunks, while the rewrite runs:
            # what they see is the datastore's business; what the cache keeps
            # is ours.
            rnd = random.Random(seed)
            while not stop.is_set():
                try:
                    with gcrig.DirectReader(t.mnt_path) as r:
                        for _ in range(4):
                            r.pread(rnd.randrange(size // MiB) * MiB, MiB)
                    with open(t.mnt_path, "rb") as f:
                        os.pread(f.fileno(), MiB, rnd.randrange(size // MiB) * MiB)
                except OSError:
                    pass

        readers = [threading.Thread(target=reader, args=(round_ * 10 + i,)) for i in range(4)]
        for r in readers:
            r.start()
        time.sleep(0.2)
        fd = os.open(t.ds_path, os.O_WRONLY)
        try:
            os.pwrite(fd, new, 0)  # one write of the whole file, in place
            os.fsync(fd)
        finally:
            os.close(fd)
        time.sleep(0.2)
        stop.set()
        for r in readers:
            r.join()
        contents.append(new)

        settled(t.ds_path)
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), new,
                                  f"round {round_}: O_DIRECT open after the rewrite")
        gcrig.assert_same_content(read_buffered(t.mnt_path), new,
                                  f"round {round_}: buffered open after the rewrite")

    agent.restart()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), contents[-1],
                              "after a restart")
    gcrig.assert_same_content(read_buffered(t.mnt_path), contents[-1], "buffered after a restart")


def test_old_generation_pages_never_reach_new_opens(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=75)
    agent = ws.agent(settle="0s").start()
    half = SIZE // 2
    old = open(t.mnt_path, "rb", buffering=0)
    try:
        assert os.pread(old.fileno(), half, 0) == t.data[:half]  # cached, in the page cache

        new = gcrig.random_bytes(SIZE, seed=76)
        new_mtime = os.stat(t.ds_path).st_mtime_ns + 7_000_000_000
        fd = os.open(t.ds_path, os.O_WRONLY)
        os.pwrite(fd, new, 0)
        os.close(fd)
        os.utime(t.ds_path, ns=(new_mtime, new_mtime))
        gcrig.wait_until(lambda: os.stat(t.mnt_path).st_mtime_ns == new_mtime,
                         "the mount shows the new mtime")

        b = open(t.mnt_path, "rb", buffering=0)
        try:
            # The old handle reads its generation again: those pages must
            # not be what the new handle sees.
            seen_old = os.pread(old.fileno(), half, 0)
            assert seen_old in (t.data[:half], b""), "old handle saw other bytes than its own"
            gcrig.assert_same_content(os.pread(b.fileno(), half, 0), new[:half],
                                      "new handle while the old one is open")
            gcrig.assert_same_content(read_buffered(t.mnt_path), new,
                                      "a third open while the old one is open")
            # The old handle never mixes: its generation, or an error.
            try:
                got = os.pread(old.fileno(), SIZE, 0)
            except OSError:
                got = None
            assert got is None or got == t.data or got == t.data[:len(got)], \
                "the old handle read bytes of the new generation"
        finally:
            b.close()
    finally:
        old.close()
    gcrig.assert_same_content(read_buffered(t.mnt_path), new, "open after the old handle closed")
    assert agent.metrics().value("goldcache_template_changed_while_open_total") >= 1
