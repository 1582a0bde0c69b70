"""Boot storm over a real NFS datastore: goldcached --datastore nfs://... in
front of nfs-ganesha on loopback (tests/integration/nfsrig.py). Eight desktops
read one template at once through the mount and get the source's bytes, and
the filer serves each byte about once, counted twice, independently:

- by the agent: goldcache_datastore_read_bytes_total;
- by the server: the ganesha process's /proc/<pid>/io rchar. Ganesha's VFS
  FSAL reads the export file with pread(), so rchar grows by every byte it
  serves. rchar also counts ganesha's other read-type syscalls (its config,
  /proc and /etc lookups, RPC records it reads with read()); SERVER_SLACK
  bounds those: without a storm they are a few KiB per second.

A direct `nfs-cat` of the template then shows that the server-side measure
sees reads: it grows by at least the template's size.
"""



import gcrig
from gcrig import MiB

SIZE = 128 * MiB
TEMPLATE = "templates/win11.img"
SERVER_SLACK = 4 * MiB


def test_storm_over_nfs_gets_source_bytes_and_the_filer_serves_each_byte_once(
        ws, make_template, rig):
    t = make_template(TEMPLATE, SIZE, seed=12)
    agent = ws.agent(datastore=rig.url(), cache_size="1GiB").start()
    ganesha = rig.ganesha.pid
    before = gcrig.proc_io(ganesha)["rchar"]

    bad = gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS)
    assert not {r: o[:5] for r, o in bad.items() if o}, "readers saw wrong bytes at offsets"

    served = gcrig.proc_io(ganesha)["rchar"] - before
    print(f"storm: ganesha rchar +{served / MiB:.2f} MiB")
    assert rig.ganesha.pid == ganesha and rig.running(), "ganesha restarted during the storm"
    m = agent.metrics()
    ds_bytes = m.value("goldcache_datastore_read_bytes_total")
    assert SIZE <= ds_bytes <= 1.1 * SIZE, (
        f"the agent read {ds_bytes / MiB:.1f} MiB over NFS for a {SIZE // MiB} MiB template "
        f"read by {len(gcrig.STORM_READERS)} readers")
    assert SIZE <= served <= 1.1 * SIZE + SERVER_SLACK, (
        f"ganesha read {served / MiB:.1f} MiB (rchar) to serve a {SIZE // MiB} MiB template "
        f"to {len(gcrig.STORM_READERS)} readers through goldcache")
    assert (m.value("goldcache_read_bytes_total", source="cache")
            + m.value("goldcache_read_bytes_total", source="datastore")) == len(gcrig.STORM_READERS) * SIZE
    assert m.value("goldcache_datastore_up") == 1
    assert m.value("goldcache_datastore_errors_total") == 0

    # The server-side measure is not blind: one direct read over NFS, no
    # goldcache, costs ganesha the whole file.
    before = gcrig.proc_io(ganesha)["rchar"]
    gcrig.assert_same_content(gcrig.nfs_cat(rig.url(TEMPLATE)), t.data, "nfs-cat of the template")
    direct = gcrig.proc_io(ganesha)["rchar"] - before
    print(f"nfs-cat: ganesha rchar +{direct / MiB:.2f} MiB; "
          f"during the storm the agent read {ds_bytes / MiB:.2f} MiB over NFS")
    assert direct >= SIZE, (
        f"ganesha's rchar grew by {direct / MiB:.1f} MiB for an nfs-cat of {SIZE // MiB} MiB: "
        f"it does not count what ganesha serves")


def test_second_storm_over_nfs_costs_the_filer_nothing(ws, make_template, rig):
    t = make_template(TEMPLATE, 32 * MiB, seed=13)
    agent = ws.agent(datastore=rig.url()).start()
    assert not any(gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS[:2]).values())
    m0 = agent.metrics()
    rchar0 = gcrig.proc_io(rig.ganesha.pid)["rchar"]

    bad = gcrig.storm(t.mnt_path, t.data, gcrig.STORM_READERS)
    assert not {r: o[:5] for r, o in bad.items() if o}

    m1 = agent.metrics()
    assert (m1.value("goldcache_datastore_read_bytes_total")
            == m0.value("goldcache_datastore_read_bytes_total")), \
        "a fully cached template was read over NFS again"
    served = gcrig.proc_io(rig.ganesha.pid)["rchar"] - rchar0
    assert served <= SERVER_SLACK, f"ganesha read {served / MiB:.1f} MiB during a warm storm"
