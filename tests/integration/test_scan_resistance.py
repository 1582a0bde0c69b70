"""The noon antivirus sweep through a real mount: a boot set read twice in
64 KiB requests (as a guest boots) survives one pass over a template twice
the cache's size in 64 KiB requests, and a clean restart keeps what the
cache learned, so the next sweep still cannot push the boot set out.

Measured by the agent's own datastore byte counter; reads are O_DIRECT so
the kernel page cache plays no part."""

import random

import gcrig
from gcrig import KiB, MiB

TEMPLATE = "templates/gold.img"
CACHE = 64 * MiB
TEMPLATE_SIZE = 2 * CACHE
CHUNK = MiB            # the agent's default chunk size
BOOT_CHUNKS = 24       # 24 MiB of the template, scattered, as a boot reads it
REQUEST = 64 * KiB


def boot_set(seed: int) -> list[int]:
    """Chunk numbers a boot reads: scattered, never two neighbours (so no
    sequential run, no readahead)."""
    rnd = random.Random(seed)
    picked = sorted(rnd.sample(range(0, TEMPLATE_SIZE // CHUNK, 2), BOOT_CHUNKS))
    rnd.shuffle(picked)
    return picked


def boot(path: str, data: bytes, chunks: list[int]) -> None:
    """Reads each boot chunk in 64 KiB requests through one handle, checking bytes."""
    with gcrig.DirectReader(path, REQUEST) as r:
        for c in chunks:
            for off in range(c * CHUNK, (c + 1) * CHUNK, REQUEST):
                assert r.pread(off, REQUEST) == data[off:off + REQUEST], f"boot read at {off}"


def sweep(path: str, data: bytes) -> None:
    """One pass over the whole file in 64 KiB requests, as an antivirus scan."""
    with gcrig.DirectReader(path, REQUEST) as r:
        for off in range(0, len(data), REQUEST):
            assert r.pread(off, REQUEST) == data[off:off + REQUEST], f"sweep read at {off}"


def datastore_bytes(agent) -> float:
    return agent.metrics().value("goldcache_datastore_read_bytes_total")


def sweep_then_boot(agent, t, chunks, what):
    """One sweep, which must really go to the datastore (or it proves
    nothing), then a boot, which must find its set still cached."""
    boot_bytes = len(chunks) * CHUNK
    before = datastore_bytes(agent)
    sweep(t.mnt_path, t.data)
    # At most what the cache held besides the boot set can have been a hit:
    # at least the template less the cache came from the datastore. (More
    # hits than a plain LRU would give happen when the local disk is slow:
    # a chunk the write-behind queue had no room for is served uncached and
    # evicts nothing.)
    swept = datastore_bytes(agent) - before
    assert swept >= TEMPLATE_SIZE - CACHE, \
        f"the sweep read only {swept / MiB:.1f} MiB from the datastore: it proves nothing"
    before = datastore_bytes(agent)
    boot(t.mnt_path, t.data, chunks)
    refetched = datastore_bytes(agent) - before
    assert refetched <= 0.05 * boot_bytes, \
        f"{what} evicted the boot set: the next boot read {refetched / MiB:.1f} MiB " \
        f"of {boot_bytes // MiB} MiB from the datastore"


def test_a_sweep_twice_the_cache_leaves_the_boot_set_cached_also_after_a_restart(
        ws, make_template):
    t = make_template(TEMPLATE, TEMPLATE_SIZE, seed=91)
    chunks = boot_set(seed=92)
    boot_bytes = BOOT_CHUNKS * CHUNK
    agent = ws.agent(cache_size=f"{CACHE // MiB}MiB").start()

    boot(t.mnt_path, t.data, chunks)  # cold: fetched once
    assert datastore_bytes(agent) >= boot_bytes
    boot(t.mnt_path, t.data, chunks)  # the second boot: every chunk is in use twice
    sweep_then_boot(agent, t, chunks, "the sweep")
    assert agent.metrics().value("goldcache_cache_evictions_total") > 0

    # A clean restart keeps the eviction order: a sweep right after it (no
    # boot in between to re-teach the cache) still leaves the boot set alone.
    assert agent.stop() == 0
    agent.start()
    sweep_then_boot(agent, t, chunks, "after a restart the sweep")
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
