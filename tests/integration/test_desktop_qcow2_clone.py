"""The usual VDI layout: a qcow2 linked clone provisioned on the datastore
(pool/vm1.qcow2, backing ../templates/t.img), used through the mount with
qemu-io -t none (O_DIRECT). Its writes live in the desktop's overlay; after the
last close, or `goldcache reset`, it reads as the template again; its datastore
bytes never change."""

import os
import shutil

import pytest

import gcrig
from gcrig import MiB

TEMPLATE = "templates/t.img"
CLONE = "pool/vm1.qcow2"
SIZE = 64 * MiB
AB = 0xAB
AB_BYTES = 4 * MiB  # the template starts with 4 MiB of 0xab, then random data
WRITE = "write -P 0x5a 1M 2M"
READ_WRITTEN = "read -P 0x5a 1M 2M"
# The template around and under the written range: 0xab in [0, 4M).
READ_TEMPLATE = [f"read -P 0x{AB:x} 0 1M", f"read -P 0x{AB:x} 3M 1M"]
READ_TEMPLATE_ALL = f"read -P 0x{AB:x} 0 4M"
NOT_WRITTEN = "Pattern verification failed at offset 1048576, 2097152 bytes"

run = gcrig.run_tool
qemu_io = gcrig.qemu_io
ok = gcrig.qemu_io_ok



@pytest.fixture
def provisioned(ws, make_template):
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not installed (package qemu-utils)")
    data = bytes([AB]) * AB_BYTES + gcrig.random_bytes(SIZE - AB_BYTES, seed=61)
    t = make_template(TEMPLATE, data=data)
    os.makedirs(ws.ds("pool"))
    # Provisioning, as a VDI broker does it: on the datastore, not through goldcache.
    r = run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "../templates/t.img",
             "vm1.qcow2"], cwd=ws.ds("pool"))
    assert r.returncode == 0, r.stdout
    return t, gcrig.sha256_file(ws.ds(CLONE)), os.stat(ws.ds(CLONE))


def assert_clone_untouched(ws, agent, sha, st):
    assert gcrig.sha256_file(ws.ds(CLONE)) == sha, "the clone's datastore bytes changed"
    now = os.stat(ws.ds(CLONE))
    assert (now.st_size, now.st_mtime_ns, now.st_ctime_ns) == \
        (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert sorted(os.listdir(ws.ds("pool"))) == ["vm1.qcow2"]
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def test_clone_writes_and_reads_then_reads_as_template_after_last_close(ws, provisioned):
    t, sha, st = provisioned
    agent = ws.agent().start()
    clone = ws.mnt(CLONE)

    r = qemu_io(clone, WRITE, READ_WRITTEN, *READ_TEMPLATE)
    assert ok(r), r.stdout
    assert "wrote 2097152/2097152 bytes at offset 1048576" in r.stdout, r.stdout
    assert "read 2097152/2097152 bytes at offset 1048576" in r.stdout, r.stdout

    r = run(["qemu-img", "check", clone])
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout

    # Every handle closed (qemu-io and qemu-img exited): the overlay is gone.
    assert gcrig.wait_desktop_closed(agent, CLONE) is None, agent.desktops()
    assert agent.metrics().value("goldcache_desktop_resets_total", reason="last_close") >= 1

    r = qemu_io(clone, READ_WRITTEN, readonly=True)
    assert r.returncode != 0 and NOT_WRITTEN in r.stdout, \
        f"the 0x5a write survived the last close:\n{r.stdout}"
    r = qemu_io(clone, READ_TEMPLATE_ALL, readonly=True)
    assert ok(r), r.stdout
    r = run(["qemu-img", "compare", "-T", "none", "-f", "qcow2", "-F", "raw", clone,
             t.ds_path])
    assert r.returncode == 0 and "Images are identical" in r.stdout, r.stdout
    r = run(["qemu-img", "check", clone])
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout

    assert_clone_untouched(ws, agent, sha, st)


def test_manual_reset_keeps_writes_across_close_refuses_while_open_then_discards(
        ws, provisioned):
    t, sha, st = provisioned
    agent = ws.agent(extra_args=["--reset", "manual"]).start()
    clone = ws.mnt(CLONE)

    r = qemu_io(clone, WRITE)
    assert ok(r) and "wrote 2097152/2097152 bytes at offset 1048576" in r.stdout, r.stdout
    d = gcrig.wait_desktop_closed(agent, CLONE)
    assert d is not None and d["overlay_ram_bytes"] + d["overlay_disk_bytes"] >= 2 * MiB, d
    assert d["host_only"] is False

    # reset=manual: the writes survive the last close and a new open.
    r = qemu_io(clone, READ_WRITTEN, *READ_TEMPLATE, readonly=True)
    assert ok(r), r.stdout
    r = run(["qemu-img", "check", clone])
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout

    # Open (the VM runs): reset refuses and discards nothing.
    vm = os.open(clone, os.O_RDONLY)
    try:
        r = agent.cli("reset", clone, check=False)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "pool/vm1.qcow2 is open" in r.stderr and "--force" in r.stderr, r.stderr
        assert agent.metrics().value("goldcache_desktop_resets_total", reason="command") == 0
        r = qemu_io(clone, READ_WRITTEN, readonly=True)
        assert ok(r), f"a refused reset discarded the writes:\n{r.stdout}"
    finally:
        os.close(vm)

    # Closed: reset by command. The path may also be given on the datastore side.
    gcrig.wait_desktop_closed(agent, CLONE)
    agent.cli("reset", ws.ds(CLONE))
    assert agent.metrics().value("goldcache_desktop_resets_total", reason="command") == 1
    assert CLONE not in agent.desktops()
    r = qemu_io(clone, READ_WRITTEN, readonly=True)
    assert r.returncode != 0 and NOT_WRITTEN in r.stdout, \
        f"the 0x5a write survived goldcache reset:\n{r.stdout}"
    r = qemu_io(clone, READ_TEMPLATE_ALL, readonly=True)
    assert ok(r), r.stdout
    r = run(["qemu-img", "check", clone])
    assert r.returncode == 0 and "No errors were found on the image." in r.stdout, r.stdout

    # --force resets an open desktop.
    r = qemu_io(clone, WRITE)
    assert ok(r), r.stdout
    vm = os.open(clone, os.O_RDONLY)
    try:
        agent.cli("reset", "--force", clone)
        r = qemu_io(clone, READ_WRITTEN, readonly=True)
        assert r.returncode != 0 and NOT_WRITTEN in r.stdout, r.stdout
    finally:
        os.close(vm)
    assert agent.metrics().value("goldcache_desktop_resets_total", reason="command") == 2

    assert_clone_untouched(ws, agent, sha, st)
