"""A desktop fills the host's local space: its writer gets ENOSPC (not EIO, not
a crash, not a datastore write); the read cache gave up its space first; the
agent, the other desktop and template reads carry on; a metric and a log line
name the desktop; after reset the space is back."""

import errno
import mmap
import os

import pytest

import gcrig
from gcrig import MiB

TEMPLATE = "templates/t.img"
TEMPLATE_SIZE = 32 * MiB
DISK_SIZE = 256 * MiB
BUDGET = 64 * MiB       # --cache-size: read cache and overlay disk tier together
RAM = 4 * MiB           # --overlay-ram per desktop
ARGS = ["--overlay-ram", "4MiB", "--overlay-ram-host", "8MiB"]


class Filler:
    """Writes 1 MiB O_DIRECT blocks to a desktop disk through one open fd until
    the first error; each block carries its own offset so it can be checked."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self.buf = mmap.mmap(-1, MiB)
        self.written = 0
        self.error = None

    @staticmethod
    def block(off):
        return off.to_bytes(8, "little") * (MiB // 8)

    def fill(self, limit):
        while self.written < limit:
            self.buf[:] = self.block(self.written)
            try:
                n = os.pwritev(self.fd, [self.buf], self.written)
            except OSError as e:
                self.error = e
                return
            assert n == MiB, f"short write of {n} bytes at {self.written}"
            self.written += n

    def check(self, offsets):
        bad = []
        for off in offsets:
            n = os.preadv(self.fd, [self.buf], off)
            if n != MiB or self.buf[:] != self.block(off):
                bad.append(off)
        return bad

    def close(self):
        self.buf.close()
        os.close(self.fd)


def roundtrip(path, offset, data):
    """Writes `data` (4 KiB multiple) at `offset` with O_DIRECT and reads it back."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, len(data))
    try:
        buf[:] = data
        assert os.pwritev(fd, [buf], offset) == len(data)
        buf[:] = bytes(len(data))
        assert os.preadv(fd, [buf], offset) == len(data)
        return bytes(buf)
    finally:
        buf.close()
        os.close(fd)


@pytest.mark.parametrize("reset", ["on-last-close", "manual"])
def test_full_local_disk_gives_enospc_to_that_desktop_only_and_reset_gives_space_back(
        ws, make_template, reset):
    t = make_template(TEMPLATE, TEMPLATE_SIZE, seed=81)
    b_head = gcrig.random_bytes(MiB, seed=82)
    for name in ("a", "b"):
        path = ws.ds(f"pool/{name}.img")
        gcrig.write_file(path, b_head if name == "b" else b"")
        os.truncate(path, DISK_SIZE)
    ds_before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent(cache_size="64MiB", extra_args=ARGS + ["--reset", reset]).start()
    a_path, b_path = ws.mnt("pool/a.img"), ws.mnt("pool/b.img")

    # The read cache holds the template: half the budget.
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "template")
    m = agent.metrics()
    assert m.value("goldcache_cache_used_bytes") >= TEMPLATE_SIZE
    # Space for the overlays is lent ahead of need, from the same budget.
    assert gcrig.local_budget(m) == BUDGET
    assert m.value("goldcache_overlay_space_pool_bytes") < BUDGET // 4

    a = Filler(a_path)
    try:
        a.fill(DISK_SIZE)
        assert a.error is not None, f"wrote all {DISK_SIZE // MiB} MiB into a {BUDGET // MiB} " \
                                    f"MiB budget without an error"
        assert a.error.errno == errno.ENOSPC, f"the full desktop got {a.error!r}, not ENOSPC"
        # Overlays outrank the read cache: the cache gave its space to a.img,
        # which got (nearly) the whole budget plus its RAM tier, far more than
        # the half the cache had left free.
        assert a.written >= BUDGET - TEMPLATE_SIZE + RAM + 16 * MiB, a.written
        m = agent.metrics()
        assert m.value("goldcache_cache_capacity_bytes") < BUDGET
        assert m.value("goldcache_cache_used_bytes") < TEMPLATE_SIZE
        assert m.value("goldcache_cache_evictions_total") > 0
        assert m.value("goldcache_overlay_enospc_total") >= 1
        assert m.value("goldcache_overlay_desktop_enospc_total", desktop="pool/a.img") >= 1
        assert m.value("goldcache_overlay_desktop_enospc_total", default=0,
                       desktop="pool/b.img") == 0
        assert m.value("goldcache_overlay_bytes", tier="disk") > 0
        with open(agent.log_path, encoding="utf-8", errors="replace") as f:
            walls = [line for line in f if "ENOSPC" in line and "pool/a.img" in line]
        assert walls, "no log line names pool/a.img hitting ENOSPC"

        # The agent serves on; what a.img got is intact; b.img and the
        # template work.
        assert agent.running() and gcrig.pid_alive(agent.pid)
        assert agent.get("/healthz")
        assert not a.check(range(0, a.written, 7 * MiB)), "a.img's accepted writes are damaged"
        block = bytes([0xB7]) * (64 * 1024)
        assert roundtrip(b_path, 4 * MiB, block) == block, "b.img cannot write and read back"
        with gcrig.DirectReader(b_path) as rd:
            assert rd.pread(0, MiB) == b_head, "b.img's datastore content reads wrong"
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                                  "template after ENOSPC")
        # Still full: a.img's next write gets ENOSPC again.
        a.error = None
        a.fill(a.written + MiB)
        assert a.error is not None and a.error.errno == errno.ENOSPC, a.error
    finally:
        a.close()
    first = a.written

    if reset == "manual":
        gcrig.wait_until(lambda: agent.desktops()["pool/a.img"]["open_handles"] == 0,
                         "a.img's handle is released")
        d = agent.desktops()["pool/a.img"]
        assert d["overlay_disk_bytes"] > 0, f"reset=manual, yet closing a.img discarded it: {d}"
        assert agent.metrics().value("goldcache_overlay_bytes", tier="disk") > 0
        agent.cli("reset", a_path)
        assert agent.metrics().value("goldcache_desktop_resets_total", reason="command") >= 1

    # Reset: the overlay's space goes back, the cache gets its lent space back.
    gcrig.wait_until(lambda: "pool/a.img" not in agent.desktops(), "a.img's overlay is gone")
    agent.wait_metric("goldcache_overlay_bytes", lambda v: v == 0, tier="disk")
    gcrig.wait_until(lambda: gcrig.local_budget(agent.metrics()) == BUDGET,
                     "the cache has its lent space back")
    assert agent.metrics().value("goldcache_overlay_space_pool_bytes") < BUDGET // 4
    a = Filler(a_path)
    try:
        with gcrig.DirectReader(a_path) as rd:
            assert rd.pread(0, MiB) == bytes(MiB), "a.img does not read as the datastore file"
        a.fill(DISK_SIZE)
        assert a.error is not None and a.error.errno == errno.ENOSPC, a.error
        assert a.written >= first - 4 * MiB, \
            f"after reset a.img took {a.written // MiB} MiB, before {first // MiB} MiB"
    finally:
        a.close()

    assert agent.running()
    assert gcrig.tree_snapshot(ws.datastore) == ds_before, "the datastore tree changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
