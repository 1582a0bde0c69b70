"""A reset is immediate (design invariant 8): after a desktop's reset, by its
last close or by `goldcache reset`, the next open, however soon, sees exactly
the datastore file: size, attributes, bytes. A VM restarted at once must boot
from the pristine clone, never from the writes of the session before."""

import os

import pytest

import gcrig
from gcrig import KiB, MiB

SIZE = 8 * MiB


def provision(ws, rel="pool/vm1.img", seed=61):
    data = gcrig.random_bytes(SIZE, seed)
    gcrig.write_file(ws.ds(rel), data)
    return rel, data


def assert_pristine(path, data, what):
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        assert st.st_size == len(data), f"{what}: fstat size {st.st_size}, datastore {len(data)}"
        end = os.lseek(f.fileno(), 0, os.SEEK_END)
        assert end == len(data), f"{what}: SEEK_END at {end}, datastore size {len(data)}"
        got = os.pread(f.fileno(), len(data) + 4096, 0)
    gcrig.assert_same_content(got, data, what)


def test_truncated_desktop_reopened_at_once_after_last_close_is_pristine(ws):
    rel, data = provision(ws)
    ws.agent().start()
    path = ws.mnt(rel)
    with open(path, "r+b") as f:
        f.write(b"x" * 4096)
        os.ftruncate(f.fileno(), 1 * MiB)
        assert os.fstat(f.fileno()).st_size == 1 * MiB
    # No wait for the release: the VM restarts at once (qemu-img info, then
    # QEMU's open).
    assert os.stat(path).st_size == SIZE, "stat right after the last close shows the old size"
    assert_pristine(path, data, "reopened at once after truncate and last close")


def test_stat_right_after_the_last_close_shows_the_datastore_file(ws):
    # The kernel keeps the attributes of the session's last reply (here the
    # ftruncate's) for the attribute timeout, and RELEASE comes after
    # close(2) returned: a stat in between must still show the file the next
    # boot gets (qemu-img info before QEMU's open), not the session's.
    rel, data = provision(ws)
    ws.agent().start()
    path = ws.mnt(rel)
    wrong = []
    for i in range(50):
        fd = os.open(path, os.O_RDWR)
        try:
            if i % 2:
                os.pwrite(fd, b"w" * 4096, 0)
            os.ftruncate(fd, 1 * MiB)
        finally:
            os.close(fd)
        size = os.stat(path).st_size
        if size != SIZE:
            wrong.append((i, size))
    assert not wrong, f"stat right after the last close showed the closed session: {wrong[:5]}"
    assert_pristine(path, data, "after 50 sessions")


def test_desktop_reset_by_command_is_pristine_at_once(ws):
    rel, data = provision(ws)
    agent = ws.agent(extra_args=["--reset", "manual"]).start()
    path = ws.mnt(rel)
    with open(path, "r+b") as f:
        f.write(b"y" * 8192)
        os.ftruncate(f.fileno(), 3 * MiB)
    # The kernel saw the 3 MiB size through the stat right before the reset.
    assert os.stat(path).st_size == 3 * MiB
    gcrig.wait_desktop_closed(agent, rel)
    agent.cli("reset", path)
    assert os.stat(path).st_size == SIZE, "stat right after `goldcache reset` shows the old size"
    assert_pristine(path, data, "after goldcache reset")


def test_reopen_racing_the_release_of_the_last_close_never_sees_old_writes(ws):
    # The kernel sends RELEASE after close(2) returned, so the next OPEN can
    # reach the agent before it: that open must not join the old session.
    rel, data = provision(ws)
    agent = ws.agent().start()
    path = ws.mnt(rel)
    leaked = []
    for i in range(100):
        fd = os.open(path, os.O_RDWR)
        try:
            got = os.pread(fd, 64 * KiB, 0)
            if got != data[:64 * KiB]:
                leaked.append(i)
            os.pwrite(fd, bytes([i % 251 + 1]) * (64 * KiB), 0)
            os.pread(fd, MiB, 0)
        finally:
            os.close(fd)
    assert not leaked, (f"{len(leaked)} of 100 opens right after a close read the previous "
                        f"session's writes (first: {leaked[:5]})")
    gcrig.wait_desktop_closed(agent, rel)
    m = agent.metrics()
    assert m.value("goldcache_desktop_resets_total", reason="last_close") == 100
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES


def test_open_while_another_handle_is_live_joins_its_session(ws):
    # The other side of the race above: a second open while the first handle
    # is really open (QEMU reopening its image) shares the writes.
    rel, data = provision(ws)
    ws.agent().start()
    path = ws.mnt(rel)
    a = os.open(path, os.O_RDWR)
    try:
        os.pwrite(a, b"z" * 4096, 0)
        b = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(b, 4096, 0) == b"z" * 4096
        finally:
            os.close(b)
        # b's close is not a's: a's session goes on.
        assert os.pread(a, 4096, 0) == b"z" * 4096
    finally:
        os.close(a)
    assert_pristine(path, data, "after the last of two handles closed")


def test_children_of_the_process_holding_a_desktop_open_do_not_close_its_session(ws):
    # A VM manager (or the storm harness) holds the disk open and starts
    # processes: each fork+exec closes the inherited close-on-exec copy of
    # its descriptor, and the kernel sends a FLUSH from the child. That is
    # not the holder closing: the next open joins the live session at once,
    # with no wait for a release that is not coming.
    rel, data = provision(ws)
    agent = ws.agent().start()
    path = ws.mnt(rel)
    holder = os.open(path, os.O_RDWR)  # O_CLOEXEC, as Python opens
    try:
        os.pwrite(holder, b"h" * 4096, 0)
        for i in range(3):
            # A child that inherits the descriptor and drops it at exec.
            assert os.spawnv(os.P_WAIT, "/bin/true", ["true"]) == 0
            fd = os.open(path, os.O_RDONLY)
            try:
                assert os.pread(fd, 4096, 0) == b"h" * 4096, "the open did not join the session"
            finally:
                os.close(fd)
        assert agent.metrics().value("goldcache_desktop_release_waits_total") == 0, \
            "an open waited for the release of a session still open in its holder"
    finally:
        os.close(holder)
    assert_pristine(path, data, "after the holder closed")
