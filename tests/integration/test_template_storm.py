"""Boot storm: many desktops read one template at once through the mount."""


import gcrig
from gcrig import MiB

SIZE = 256 * MiB


def test_concurrent_readers_get_source_bytes_and_datastore_serves_each_chunk_once(
        ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=2)
    agent = ws.agent(cache_size="1GiB").start()

    bad = gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS)
    assert not {r: o[:5] for r, o in bad.items() if o}, "readers saw wrong bytes at offsets"

    m = agent.metrics()
    ds_bytes = m.value("goldcache_datastore_read_bytes_total")
    assert SIZE <= ds_bytes <= 1.1 * SIZE, (
        f"datastore served {ds_bytes / MiB:.1f} MiB for a {SIZE // MiB} MiB template "
        f"read by {len(gcrig.STORM_READERS)} readers")
    served = (m.value("goldcache_read_bytes_total", source="cache")
              + m.value("goldcache_read_bytes_total", source="datastore"))
    assert served == len(gcrig.STORM_READERS) * SIZE, (
        f"goldcache_read_bytes_total sums to {served}, readers read {len(gcrig.STORM_READERS) * SIZE}")
    assert m.value("goldcache_cache_hits_total") > 0
    assert m.value("goldcache_cache_used_bytes") >= SIZE


def test_second_storm_is_served_from_cache(ws, make_template):
    t = make_template("templates/win11.img", 64 * MiB, seed=3)
    agent = ws.agent().start()
    assert not any(gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS[:2]).values())
    before = agent.metrics()

    bad = gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS)
    assert not {r: o[:5] for r, o in bad.items() if o}

    after = agent.metrics()
    assert (after.value("goldcache_datastore_read_bytes_total")
            == before.value("goldcache_datastore_read_bytes_total")), \
        "a fully cached template was read from the datastore again"
    from_cache = (after.value("goldcache_read_bytes_total", source="cache")
                  - before.value("goldcache_read_bytes_total", source="cache"))
    assert from_cache == len(gcrig.STORM_READERS) * t.size


def test_read_cache_off_sends_every_read_to_the_datastore(ws, make_template):
    # The "no goldcache" baseline of bench/storm: nothing is cached.
    t = make_template("templates/win11.img", 16 * MiB, seed=4)
    agent = ws.agent(extra_args=["--read-cache", "off"]).start()
    for _ in range(2):
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "read")
    m = agent.metrics()
    assert m.value("goldcache_datastore_read_bytes_total") >= 2 * t.size
    assert m.value("goldcache_read_bytes_total", source="datastore") == 2 * t.size
    assert m.value("goldcache_cache_used_bytes") == 0
