"""A qcow2 linked clone created through the mount in a nonpersistent area
(`qemu-img create ... -b ../templates/t.img vm9.qcow2` in <mnt>/pool) exists
only on this host: it survives close and reopen, works with qemu-io -t none,
can be renamed, and is gone from the host after unlink. The datastore never
sees it."""

import os
import shutil

import pytest

import gcrig
from gcrig import MiB

SIZE = 64 * MiB
AB = 0xAB
AB_BYTES = 4 * MiB  # the template starts with 4 MiB of 0xab, then random data

run = gcrig.run_tool
qemu_io = gcrig.qemu_io
ok = gcrig.qemu_io_ok



def check_ok(path):
    r = run(["qemu-img", "check", path])
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout


def test_clone_created_through_mount_is_host_only_survives_reopen_and_unlink_removes_it(
        ws, make_template):
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not installed (package qemu-utils)")
    data = bytes([AB]) * AB_BYTES + gcrig.random_bytes(SIZE - AB_BYTES, seed=71)
    t = make_template("templates/t.img", data=data)
    gcrig.write_file(ws.ds("pool/vm1.img"), gcrig.random_bytes(MiB, seed=72))
    before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent().start()
    pool = ws.mnt("pool")
    clone = ws.mnt("pool/vm9.qcow2")

    r = run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "../templates/t.img",
             "vm9.qcow2"], cwd=pool)
    assert r.returncode == 0, r.stdout
    assert sorted(os.listdir(pool)) == ["vm1.img", "vm9.qcow2"]
    assert not os.path.lexists(ws.ds("pool/vm9.qcow2"))
    desk = agent.desktops()
    assert desk["pool/vm9.qcow2"]["host_only"] is True, desk
    assert desk["pool/vm9.qcow2"]["size_bytes"] == os.stat(clone).st_size > 0

    # A fresh clone reads as its template.
    r = run(["qemu-img", "compare", "-T", "none", "-f", "qcow2", "-F", "raw", clone, t.ds_path])
    assert r.returncode == 0 and "Images are identical" in r.stdout, r.stdout
    check_ok(clone)

    # Two separate qemu-io runs: the writes of the first are there for the second.
    r = qemu_io(clone, "write -P 0x5a 1M 2M", "write -P 0x3c 40M 64k")
    assert ok(r) and "wrote 2097152/2097152 bytes at offset 1048576" in r.stdout, r.stdout
    gcrig.wait_until(lambda: agent.desktops()["pool/vm9.qcow2"]["open_handles"] == 0,
                     "qemu-io's handles of vm9.qcow2 are released")
    assert agent.metrics().value("goldcache_desktop_resets_total", reason="last_close") == 0
    r = qemu_io(clone, "read -P 0x5a 1M 2M", "read -P 0x3c 40M 64k",
                f"read -P 0x{AB:x} 0 1M", f"read -P 0x{AB:x} 3M 1M", readonly=True)
    assert ok(r), f"vm9.qcow2 lost its writes between two opens:\n{r.stdout}"
    r = run(["qemu-img", "compare", "-T", "none", "-f", "qcow2", "-F", "raw", clone, t.ds_path])
    assert r.returncode == 1 and "Content mismatch at offset 1048576" in r.stdout, r.stdout
    check_ok(clone)
    assert os.stat(clone).st_size >= 2 * MiB

    # Renamed within the pool: same data under the new name.
    os.rename(clone, ws.mnt("pool/vm9b.qcow2"))
    clone = ws.mnt("pool/vm9b.qcow2")
    assert sorted(os.listdir(pool)) == ["vm1.img", "vm9b.qcow2"]
    desk = agent.desktops()
    assert "pool/vm9.qcow2" not in desk and desk["pool/vm9b.qcow2"]["host_only"] is True, desk
    r = qemu_io(clone, "read -P 0x5a 1M 2M", "read -P 0x3c 40M 64k", readonly=True)
    assert ok(r), r.stdout
    check_ok(clone)

    # Unlinked: gone from the mount, from `goldcache list`, and its bytes are
    # given back.
    gcrig.wait_until(lambda: agent.desktops()["pool/vm9b.qcow2"]["open_handles"] == 0,
                     "the handles of vm9b.qcow2 are released")
    os.unlink(clone)
    assert sorted(os.listdir(pool)) == ["vm1.img"]
    assert not os.path.lexists(clone) and not os.path.lexists(ws.mnt("pool/vm9.qcow2"))
    assert agent.desktops() == {}
    agent.wait_metric("goldcache_overlay_bytes", lambda v: v == 0, tier="ram")
    agent.wait_metric("goldcache_overlay_bytes", lambda v: v == 0, tier="disk")
    r = qemu_io(clone, "read 0 4k", readonly=True)
    assert r.returncode != 0 and "No such file or directory" in r.stdout, r.stdout

    assert gcrig.tree_snapshot(ws.datastore) == before, "the datastore tree changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
