"""Crash loop (issue 9): 20 x kill -9 of the agent under mixed load: template
readers (O_DIRECT, 64 KiB, random offsets) and desktop writers that read
back what they wrote. Every byte any read returns is checked: a read may
fail once the agent is dead (ENOTCONN), never return wrong bytes. After each
restart the desktops are pristine (the overlay went with the agent: a
restart is a reset) and the template reads right; by the end the cache has
kept what it proved and the datastore was never written.

Kill points are chosen by a seeded generator in terms of completed
operations, so the agent always dies mid-load, never at an idle moment."""

import errno
import mmap
import os
import random
import threading

import gcrig
from gcrig import KiB, MiB

TEMPLATE = "templates/t.img"
TEMPLATE_SIZE = 48 * MiB
DESKTOPS = [f"pool/d{i}.img" for i in range(3)]
DESKTOP_SIZE = 8 * MiB
CYCLES = 20
BLOCK = 64 * KiB


class Load:
    """Reader and writer threads against one agent's mount until it dies or
    stop() is called; records every wrong byte."""

    def __init__(self, ws, template, desktops, seed):
        self.ws, self.t, self.desktops = ws, template, desktops
        self.stop_flag = threading.Event()
        self.ops = 0
        self.wrong = []
        self.unexpected = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.read_template, args=(seed * 10 + i,))
                        for i in range(2)]
        self.threads += [threading.Thread(target=self.write_desktop, args=(rel, data, seed * 10 + 5 + i))
                         for i, (rel, data) in enumerate(desktops.items())]

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def count(self):
        with self.lock:
            self.ops += 1

    def failed(self, e, what):
        # Once the agent is gone, the mount answers ENOTCONN (or the open
        # fails the same way); anything else is a finding.
        if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            with self.lock:
                self.unexpected.append(f"{what}: {e!r}")

    def read_template(self, seed):
        rnd = random.Random(seed)
        try:
            with gcrig.DirectReader(self.t.mnt_path, BLOCK) as r:
                while not self.stop_flag.is_set():
                    off = rnd.randrange(0, TEMPLATE_SIZE // BLOCK) * BLOCK
                    got = r.pread(off, BLOCK)
                    if got != self.t.data[off:off + BLOCK]:
                        with self.lock:
                            self.wrong.append(f"template at {off}")
                    self.count()
        except OSError as e:
            self.failed(e, "template read")

    def write_desktop(self, rel, base, seed):
        rnd = random.Random(seed)
        buf = mmap.mmap(-1, BLOCK)
        try:
            fd = os.open(self.ws.mnt(rel), os.O_RDWR | os.O_DIRECT)
        except OSError as e:
            self.failed(e, f"open {rel}")
            return
        mine = {}  # offset -> bytes this session wrote
        try:
            while not self.stop_flag.is_set():
                off = rnd.randrange(0, DESKTOP_SIZE // BLOCK) * BLOCK
                if rnd.random() < 0.5:
                    data = rnd.randbytes(BLOCK)
                    buf[:] = data
                    assert os.pwritev(fd, [buf], off) == BLOCK
                    mine[off] = data
                n = os.preadv(fd, [buf], off)
                want = mine.get(off, base[off:off + BLOCK])
                if n != BLOCK or bytes(buf) != want:
                    with self.lock:
                        self.wrong.append(f"{rel} at {off}")
                self.count()
        except OSError as e:
            self.failed(e, f"{rel} io")
        finally:
            try:
                os.close(fd)  # the dead mount may refuse even this
            except OSError as e:
                self.failed(e, f"close {rel}")
            buf.close()

    def wait_ops(self, n):
        gcrig.wait_until(lambda: self.ops >= n or not any(t.is_alive() for t in self.threads),
                         f"{n} operations of load", timeout=60)

    def join(self):
        self.stop_flag.set()
        for th in self.threads:
            th.join(60)
            assert not th.is_alive(), "a load thread hung on the dead mount"


def test_twenty_kill9_under_load_never_serve_a_wrong_byte(ws, make_template):
    t = make_template(TEMPLATE, TEMPLATE_SIZE, seed=101)
    desktops = {}
    for i, rel in enumerate(DESKTOPS):
        desktops[rel] = gcrig.random_bytes(DESKTOP_SIZE, seed=110 + i)
        gcrig.write_file(ws.ds(rel), desktops[rel])
    ds_before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent(cache_size="128MiB")
    rnd = random.Random(102)
    for cycle in range(CYCLES):
        agent.start()
        # Pristine after the crash: the overlays went with the agent.
        for rel, data in desktops.items():
            with gcrig.DirectReader(ws.mnt(rel), MiB) as r:
                assert r.pread(0, MiB) == data[:MiB], f"cycle {cycle}: {rel} is not pristine"
        load = Load(ws, t, desktops, seed=cycle).start()
        try:
            load.wait_ops(rnd.randrange(50, 400))
            agent.kill9()
        finally:
            load.join()
        assert not load.wrong, f"cycle {cycle}: wrong bytes: {load.wrong[:5]}"
        assert not load.unexpected, f"cycle {cycle}: {load.unexpected[:5]}"

    agent.start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "after the loop")
    m = agent.metrics()
    assert m.value("goldcache_cache_used_bytes") > 0, "twenty crashes kept nothing proven"
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES
    assert agent.stop() == 0
    assert gcrig.tree_snapshot(ws.datastore) == ds_before, "the datastore changed"
