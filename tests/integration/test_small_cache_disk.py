"""The cache dir on a small real file system (a 256 MiB tmpfs) with the
default 10 GiB budget (issue 9.3): the budget is far larger than the disk,
so only the file system's own free space can say no. A desktop that fills
the disk gets ENOSPC; once its writes are gone (reset at last close), a
desktop can write again, with no `goldcache evict` by hand; the read cache
gives back what the desktops need and keeps serving correct bytes; the
agent never dies."""

import errno
import subprocess

import gcrig
from gcrig import MiB
from test_desktop_enospc import Filler

DISK = 256 * MiB
TEMPLATE = "templates/t.img"
TEMPLATE_SIZE = 96 * MiB
DESKTOP_SIZE = 1024 * MiB
ARGS = ["--overlay-ram", "4MiB", "--overlay-ram-host", "8MiB"]


def test_a_disk_smaller_than_the_budget_gives_enospc_then_space_again(ws, make_template):
    t = make_template(TEMPLATE, TEMPLATE_SIZE, seed=121)
    for name in ("a", "b"):
        gcrig.write_file(ws.ds(f"pool/{name}.img"), b"")
        with open(ws.ds(f"pool/{name}.img"), "r+b") as f:
            f.truncate(DESKTOP_SIZE)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs",
                    ws.cache_dir], check=True, timeout=30)
    agent = None
    try:
        agent = ws.agent(extra_args=ARGS).start()  # no --cache-size: the 10 GiB default
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "cold")

        a = Filler(ws.mnt("pool/a.img"))
        try:
            a.fill(DESKTOP_SIZE)
            assert a.error is not None, "wrote more than the disk holds"
            assert a.error.errno == errno.ENOSPC, f"the full desktop got {a.error!r}"
            # The read cache gave its space to the desktop: it got more than
            # the disk had free beside the cached template.
            assert a.written > DISK - TEMPLATE_SIZE, a.written // MiB
            assert not a.check(range(0, a.written, 5 * MiB)), "a.img's accepted writes are damaged"
        finally:
            a.close()
        first = a.written
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                                  "template on a full disk")
        # a.img's last close reset it: its space comes back, and b.img (and
        # then a.img again) can write, with no one evicting by hand.
        gcrig.wait_until(lambda: "pool/a.img" not in agent.desktops(), "a.img's overlay is gone")
        b = Filler(ws.mnt("pool/b.img"))
        try:
            b.fill(first // 2)
            assert b.error is None, f"after a.img's reset b.img still gets {b.error!r} " \
                                    f"at {b.written // MiB} MiB"
        finally:
            b.close()
        assert agent.running()
        assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
        assert agent.stop() == 0
    finally:
        if agent is not None and agent.running():
            agent.terminate()
        subprocess.run(["umount", ws.cache_dir], check=True, timeout=30)
