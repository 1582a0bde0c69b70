"""Content addressing: chunks known by their digest, template manifests
(`goldcache publish`), patch day, full clones, and boot-trace prefetch.

Two hosts share one datastore directory here, as two hosts of a farm share
the NFS datastore: host B publishes (it reads the whole file from the
datastore for that), host A is the host under test, so host A's datastore
counters show what a host that reads a published generation pays.
"""

import hashlib
import json
import os
import threading

import pytest

import gcrig
from gcrig import MiB

CHUNK = MiB  # the agent's default chunk size
MANIFEST = ".goldcache-manifest"
HEADER = 60  # magic 8, chunk size 4; size, mtime, ctime, ino, chunk count, trace length 8 each


def second_host(ws, name="b"):
    """An agent over the same datastore with its own mountpoint and cache:
    another host of the farm."""
    mnt = os.path.join(ws.root, f"mnt-{name}")
    cache = os.path.join(ws.root, f"cache-{name}")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    return ws.agent(mountpoint=mnt, cache_dir=cache)


def host_path(agent, rel):
    return os.path.join(agent.mountpoint, rel)


def publish(agent, rel):
    r = agent.cli("--json", "publish", host_path(agent, rel))
    return json.loads(r.stdout)


def datastore_read_bytes(agent):
    return agent.metrics().value("goldcache_datastore_read_bytes_total")


def wait_logged(agent, needle):
    """Waits until the agent's log says `needle` (it logs after counting)."""
    def logged():
        with open(agent.log_path, encoding="utf-8", errors="replace") as f:
            return needle in f.read()
    gcrig.wait_until(logged, f"the agent logs {needle!r}")


def read_whole(path, size, out, key):
    out[key] = gcrig.read_all_direct(path, size)


def wait_for_mtime(path, mtime_ns):
    gcrig.wait_until(lambda: os.stat(path).st_mtime_ns == mtime_ns,
                     f"{path} shows the new mtime through the mount")


def replace_by_rename(path, data, mtime_ns):
    gcrig.write_file(path + ".new", data, mtime_ns)
    os.replace(path + ".new", path)


def patched(data, chunks, seed):
    out = bytearray(data)
    for i, c in enumerate(chunks):
        out[c * CHUNK:(c + 1) * CHUNK] = gcrig.random_bytes(CHUNK, seed + i)
    return bytes(out)


def forge_digest(manifest_path, chunk):
    """Rewrites one chunk's digest in a manifest, resealing its checksum:
    a manifest that lies but is intact."""
    with open(manifest_path, "rb") as f:
        b = bytearray(f.read())
    at = HEADER + 32 * chunk
    b[at:at + 32] = hashlib.sha256(b"not this chunk").digest()
    b[-32:] = hashlib.sha256(bytes(b[:-32])).digest()
    with open(manifest_path, "wb") as f:
        f.write(b)


# ---------------------------------------------------------------------------


def test_publish_writes_only_the_manifests_beside_the_files(ws, make_template):
    t = make_template("templates/win11.img", 8 * MiB, seed=61)
    gcrig.write_file(ws.ds("pool/desk1.raw"), t.data)
    b = second_host(ws).start()
    before = gcrig.tree_snapshot(ws.datastore)
    for rel in (t.rel, "pool/desk1.raw"):
        got = publish(b, rel)
        assert got["chunks"] == 8 and got["bytes"] == 8 * MiB, got
        assert got["manifest"] == rel + MANIFEST, got
    after = gcrig.tree_snapshot(ws.datastore)
    added = set(after) - set(before)
    assert added == {t.rel + MANIFEST, "pool/desk1.raw" + MANIFEST}, added
    for rel in before:
        if rel in ("templates", "pool", "."):
            continue  # the directories gained the manifests
        assert after[rel] == before[rel], f"publish changed {rel}"
    # A manifest is goldcache's own file: passthrough through the mount,
    # neither a template to cache nor a desktop with an overlay.
    with open(host_path(b, t.rel + MANIFEST), "rb") as f:
        assert f.read(8) == b"GCMANIF1"
    assert "pool/desk1.raw" + MANIFEST not in b.desktops()
    assert b.metrics().value("goldcache_manifests_published_total") == 2


def test_a_published_full_clone_boots_beside_its_template_for_one_templates_reads(
        ws, make_template):
    size = 32 * MiB
    t = make_template("templates/win11.img", size, seed=62)
    clone = "pool/desk1.raw"  # a full clone: a byte copy of the template
    gcrig.write_file(ws.ds(clone), t.data)
    b = second_host(ws).start()
    publish(b, t.rel)
    publish(b, clone)
    b.stop()

    a = ws.agent().start()  # a host that has never seen either file
    got = {}
    readers = [threading.Thread(target=read_whole, args=(ws.mnt(rel), size, got, rel))
               for rel in (t.rel, clone)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    gcrig.assert_same_content(got[t.rel], t.data, "the template")
    gcrig.assert_same_content(got[clone], t.data, "the full clone")
    a.wait_index_durable()
    m = a.metrics()
    read = m.value("goldcache_datastore_read_bytes_total")
    assert read <= 1.1 * size, f"booting the template and its clone read {read / MiB:.1f} MiB"
    assert m.value("goldcache_manifests_total", result="loaded") == 2
    assert m.value("goldcache_cache_used_bytes") <= 1.05 * size  # each chunk stored once
    assert m.value("goldcache_manifest_distrusts_total") == 0
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES


@pytest.mark.parametrize("how", ["read", "warm"])
def test_patch_day_fetches_only_the_changed_chunks(ws, make_template, how):
    size = 64 * MiB
    t = make_template("templates/win11.img", size, seed=63)
    a = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), t.data, "generation 1")

    # Patch Tuesday: 3 of 64 chunks (4.7 %) change; the new file replaces the old.
    new = patched(t.data, [2, 30, 61], seed=700)
    new_mtime = os.stat(t.ds_path).st_mtime_ns + 7_000_000_000
    replace_by_rename(t.ds_path, new, new_mtime)
    b = second_host(ws).start()
    publish(b, t.rel)
    b.stop()

    wait_for_mtime(t.mnt_path, new_mtime)
    before = datastore_read_bytes(a)
    if how == "warm":
        w = json.loads(a.cli("--json", "warm", t.mnt_path).stdout)
        # Generation 1's boot trace is prefetched for generation 2 as the
        # warm starts: between them they reuse 61 chunks and fetch 3, and
        # the warm counts what it found the prefetch had done as cached.
        assert w["bytes"] == size, w
        assert 0 < w["reused_bytes"] <= 61 * MiB, w
        assert w["fetched_bytes"] <= 3 * MiB, w
        human = a.cli("warm", t.mnt_path).stdout  # now all cached: says so
        assert "reused" in human, human
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), new, "generation 2")
    fetched = datastore_read_bytes(a) - before
    assert fetched <= 0.06 * size, f"the patched generation cost {fetched / MiB:.2f} MiB"
    m = a.metrics()
    assert m.value("goldcache_manifest_chunks_total", result="hit") >= 61
    assert m.value("goldcache_cache_reused_bytes_total", by="manifest") == 61 * MiB
    assert m.value("goldcache_manifest_distrusts_total") == 0
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES


def test_a_manifest_with_a_wrong_digest_is_distrusted_and_never_serves_a_wrong_byte(
        ws, make_template):
    size = 16 * MiB
    t = make_template("templates/win11.img", size, seed=64)
    b = second_host(ws).start()
    publish(b, t.rel)
    b.stop()
    forge_digest(t.ds_path + MANIFEST, chunk=5)

    a = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), t.data, "the template")
    a.wait_metric("goldcache_manifest_distrusts_total", lambda v: v == 1)
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), t.data, "read again")
    m = a.metrics()
    assert m.value("goldcache_manifests_total", result="loaded") == 1
    assert m.value("goldcache_manifest_distrusts_total") == 1
    wait_logged(a, "its manifest says chunk 5 has digest")


def test_a_manifest_of_an_earlier_version_is_ignored_loudly(ws, make_template):
    size = 16 * MiB
    t = make_template("templates/win11.img", size, seed=65)
    b = second_host(ws).start()
    publish(b, t.rel)
    b.stop()
    # Changed in place after publishing (and not published again).
    new = patched(t.data, [7], seed=800)
    with open(t.ds_path, "r+b") as f:
        f.seek(7 * CHUNK)
        f.write(new[7 * CHUNK:8 * CHUNK])
        os.fsync(f.fileno())

    a = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, size), new, "the changed file")
    m = a.metrics()
    assert m.value("goldcache_manifests_total", result="stale") == 1
    assert m.value("goldcache_manifests_total", result="loaded") == 0
    assert m.value("goldcache_datastore_read_bytes_total") >= size  # nothing taken on its word
    wait_logged(a, "describes another version of the file")


def test_a_published_boot_trace_is_prefetched_on_a_cold_host(ws, make_template):
    size = 64 * MiB
    t = make_template("templates/win11.img", size, seed=66)
    other = make_template("templates/other.img", size, seed=67)  # no manifest
    boot = [40, 3, 4, 5, 17, 60, 0, 22, 9, 33]

    def replay(path, data, agent):
        m0 = agent.metrics().value("goldcache_cache_misses_total")
        with gcrig.DirectReader(path) as r:
            for c in boot:
                off = c * CHUNK + 4096
                assert r.pread(off, 65536) == data[off:off + 65536]
        return agent.metrics().value("goldcache_cache_misses_total") - m0

    # Host B boots the template once (its first reads are the trace) and
    # publishes it: the manifest carries the trace to every host.
    b = second_host(ws).start()
    assert replay(host_path(b, t.rel), t.data, b) > 0
    assert publish(b, t.rel)["trace_chunks"] == len(boot)
    b.stop()

    a = ws.agent().start()
    with gcrig.DirectReader(t.mnt_path):  # the first open starts the prefetch
        gcrig.wait_until(
            lambda: a.metrics().value("goldcache_template_cached_bytes", template=t.rel,
                                      default=0) == len(boot) * CHUNK,
            "the traced chunks are cached")
        before = a.metrics()
        assert replay(t.mnt_path, t.data, a) == 0, "a prefetched boot missed"
        after = a.metrics()
        # Only readahead past the boot's run of chunks 3, 4, 5 read the datastore.
        ahead = (after.value("goldcache_cache_readahead_chunks_total")
                 - before.value("goldcache_cache_readahead_chunks_total"))
        assert (after.value("goldcache_datastore_read_bytes_total")
                - before.value("goldcache_datastore_read_bytes_total")) == ahead * CHUNK
    m = a.metrics()
    assert m.value("goldcache_cache_prefetch_bytes_total") == len(boot) * CHUNK
    assert m.value("goldcache_cache_prefetch_in_time_total") == len(boot)
    # The same boot of a template without a trace misses.
    assert replay(other.mnt_path, other.data, a) > 0

    # warm --boot-set warms exactly the traced chunks.
    a.cli("evict", t.mnt_path)
    w = json.loads(a.cli("--json", "warm", "--boot-set", t.mnt_path).stdout)
    assert w["bytes"] == len(boot) * CHUNK, w
    never = make_template("templates/never.img", 4 * MiB, seed=68)
    r = a.cli("warm", "--boot-set", never.mnt_path, check=False)
    assert r.returncode == 1 and "has no boot trace yet" in r.stderr, r
