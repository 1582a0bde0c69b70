"""Attributes of a nonpersistent desktop's disk file, as docs/operations.md
("What a nonpersistent area accepts and refuses") says:

- while the desktop has an overlay on this host (it is open; or, with
  reset = "manual", it was opened since its last reset), chmod, chown,
  utimes and truncate succeed and change it on this host only: the datastore
  keeps its own attributes, and the reset takes the host's away;
- without an overlay, they fail with EROFS (they would change the datastore);
- a file created through the mount (host-only) takes them like any file.
"""

import errno
import os

import pytest

import gcrig
from gcrig import MiB

DESKTOP = "pool/a.img"


def errno_name(op):
    try:
        op()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


def attrs(path):
    s = os.stat(path)
    return (oct(s.st_mode & 0o7777), s.st_uid, s.st_gid, s.st_mtime_ns, s.st_size)


def changes(m):
    return {
        "chmod": lambda: os.chmod(m, 0o600),
        "chown": lambda: os.chown(m, 4242, 4343),
        "utime": lambda: os.utime(m, ns=(1_000_000_000, 2_000_000_000)),
        "truncate": lambda: os.truncate(m, 3 * MiB),
    }


@pytest.fixture
def desktop(ws):
    gcrig.write_file(ws.ds(DESKTOP), gcrig.random_bytes(2 * MiB, 51))
    os.chmod(ws.ds(DESKTOP), 0o644)
    return ws.mnt(DESKTOP)


def test_an_open_desktop_takes_attribute_changes_on_this_host_only(ws, desktop):
    before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent().start()
    pristine = attrs(desktop)
    fd = os.open(desktop, os.O_RDWR)
    try:
        got = {name: errno_name(op) for name, op in changes(desktop).items()}
        assert got == {name: "ok" for name in got}
        assert attrs(desktop) == ("0o600", 4242, 4343, 2_000_000_000, 3 * MiB)
        assert os.fstat(fd).st_uid == 4242
    finally:
        os.close(fd)
    gcrig.wait_desktop_closed(agent, DESKTOP)
    # The reset at the last close took the host's attributes away.
    gcrig.wait_until(lambda: attrs(desktop) == pristine, "the datastore's attributes are back")
    # Now no overlay: the same changes would be the datastore's.
    got = {name: errno_name(op) for name, op in changes(desktop).items()}
    assert got == {name: "EROFS" for name in got}
    assert gcrig.tree_snapshot(ws.datastore) == before, "the datastore changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def test_with_manual_reset_a_closed_desktop_keeps_its_overlay_and_takes_them(ws, desktop):
    before = gcrig.tree_snapshot(ws.datastore)
    agent = ws.agent(extra_args=["--reset", "manual"]).start()
    assert errno_name(changes(desktop)["chmod"]) == "EROFS"  # never opened: no overlay
    os.close(os.open(desktop, os.O_RDWR))
    gcrig.wait_desktop_closed(agent, DESKTOP)
    got = {name: errno_name(op) for name, op in changes(desktop).items()}
    assert got == {name: "ok" for name in got}
    assert attrs(desktop)[:3] == ("0o600", 4242, 4343)
    agent.cli("reset", desktop)
    got = {name: errno_name(op) for name, op in changes(desktop).items()}
    assert got == {name: "EROFS" for name in got}
    assert gcrig.tree_snapshot(ws.datastore) == before, "the datastore changed"
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def test_a_host_only_file_takes_attribute_changes_open_or_not(ws, desktop):
    agent = ws.agent().start()
    new = ws.mnt("pool/new.img")
    with open(new, "wb") as f:
        f.write(b"host only")
    got = {name: errno_name(op) for name, op in changes(new).items()}
    assert got == {name: "ok" for name in got}
    assert attrs(new) == ("0o600", 4242, 4343, 2_000_000_000, 3 * MiB)
    assert not os.path.exists(ws.ds("pool/new.img"))
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
