"""Crash safety: the cache survives kill -9 of the agent."""

import os

import gcrig
from gcrig import MiB

SIZE = 128 * MiB


def test_cache_survives_kill9_and_second_read_needs_no_datastore(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=11)
    agent = ws.agent(cache_size="1GiB").start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "first read")
    agent.wait_index_durable()
    first_pid = agent.pid

    agent.kill9()
    assert os.path.exists(os.path.join(ws.cache_dir, "RUNNING")), \
        "no RUNNING marker after kill -9: the agent cannot tell a crash from a clean stop"

    # The mount is still there, dead; the agent must clear it itself at start.
    agent.start()
    assert agent.pid != first_pid

    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                              "read after restart")
    m = agent.metrics()
    assert m.value("goldcache_datastore_read_bytes_total") == 0, \
        "after a restart over a warm cache, the template was read from the datastore again"
    assert m.value("goldcache_read_bytes_total", source="cache") == t.size


def test_clean_stop_removes_running_marker_and_keeps_cache(ws, make_template):
    t = make_template("templates/win11.img", 16 * MiB, seed=12)
    agent = ws.agent().start()
    assert os.path.exists(os.path.join(ws.cache_dir, "RUNNING"))
    gcrig.read_all_direct(t.mnt_path, t.size)

    assert agent.stop() == 0
    assert not gcrig.is_mounted(ws.mountpoint), "SIGTERM left the mount behind"
    assert not os.path.exists(os.path.join(ws.cache_dir, "RUNNING"))

    agent.start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                              "read after clean restart")
    assert agent.metrics().value("goldcache_datastore_read_bytes_total") == 0
