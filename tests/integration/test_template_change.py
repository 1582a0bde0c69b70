"""Generations: a template changed on the datastore is a new generation."""

import errno
import os
import time

import pytest

import gcrig
from gcrig import MiB

SIZE = 32 * MiB


def wait_for_mtime(path, mtime_ns, timeout=15.0):
    """Polls stat through the mount until it shows `mtime_ns` (attr timeout ~1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = os.stat(path).st_mtime_ns
        if seen == mtime_ns:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"mount still shows mtime {seen}, datastore has {mtime_ns}, "
                        f"after {timeout:.0f} s", pytrace=False)
        time.sleep(0.1)


def replace_by_rename(path, data, mtime_ns):
    tmp = path + ".new"
    gcrig.write_file(tmp, data, mtime_ns)
    os.replace(tmp, path)


def overwrite_in_place(path, data, mtime_ns):
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.mark.parametrize("change", [replace_by_rename, overwrite_in_place],
                         ids=["rename", "in_place"])
def test_new_open_after_template_change_reads_new_content(ws, make_template, change):
    t = make_template("templates/win11.img", SIZE, seed=31)
    agent = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "old content")

    new = gcrig.random_bytes(SIZE, seed=32)
    new_mtime = os.stat(t.ds_path).st_mtime_ns + 7_000_000_000
    change(t.ds_path, new, new_mtime)
    wait_for_mtime(t.mnt_path, new_mtime)

    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), new, "new content")
    m = agent.metrics()
    assert m.value("goldcache_template_generation_changes_total") >= 1
    # The new generation was fetched from the datastore, not served from old chunks.
    assert m.value("goldcache_datastore_read_bytes_total") >= 2 * SIZE


def test_template_changed_under_open_handle_is_reported_never_mixed(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=33)
    agent = ws.agent().start()
    with gcrig.DirectReader(t.mnt_path) as old_handle:
        # Cache the first half only, so the second half needs the datastore.
        for off in range(0, SIZE // 2, MiB):
            assert old_handle.pread(off, MiB) == t.data[off:off + MiB]

        new = gcrig.random_bytes(SIZE, seed=34)
        new_mtime = os.stat(t.ds_path).st_mtime_ns + 7_000_000_000
        overwrite_in_place(t.ds_path, new, new_mtime)
        wait_for_mtime(t.mnt_path, new_mtime)

        got = bytearray()
        try:
            for off in range(0, SIZE, MiB):
                got += old_handle.pread(off, MiB)
        except OSError as e:
            assert e.errno in (errno.EIO, errno.ESTALE), f"unexpected error {e}"
        else:
            assert bytes(got) in (t.data, new), \
                "a handle opened before the change read a mix of old and new content"

    m = agent.wait_metric("goldcache_template_changed_while_open_total", lambda v: v >= 1,
                          timeout=10)
    assert m >= 1
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), new,
                              "new open after change")
