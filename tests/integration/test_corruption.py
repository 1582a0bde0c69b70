"""Checksums: bytes flipped in the local chunk store never reach a reader."""

import os
import random

import gcrig
from gcrig import KiB, MiB

SIZE = 64 * MiB
FLIPS = 64


def flip_bytes(path, limit, count, seed):
    """XORs one byte in `count` distinct 4 KiB blocks of `path` that hold data
    (not all zeros), within the first `limit` bytes. Returns the offsets."""
    rnd = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        size = min(os.fstat(fd).st_size, limit)
        assert size >= 4 * KiB, f"{path} holds {size} bytes: nothing cached?"
        offsets, seen = [], set()
        for _ in range(count * 200):
            if len(offsets) == count:
                break
            block = rnd.randrange(size // (4 * KiB))
            if block in seen:
                continue
            seen.add(block)
            data = os.pread(fd, 4 * KiB, block * 4 * KiB)
            if not any(data):
                continue  # an unused slot
            off = block * 4 * KiB + rnd.randrange(len(data))
            os.pwrite(fd, bytes([data[off % (4 * KiB)] ^ 0xFF]), off)
            offsets.append(off)
        os.fsync(fd)
        assert len(offsets) == count, f"found only {len(offsets)} used blocks in {path}"
        return offsets
    finally:
        os.close(fd)


def test_flipped_bytes_in_stopped_cache_are_detected_and_refetched(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=21)
    agent = ws.agent(cache_size="256MiB").start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "first read")
    assert agent.stop() == 0

    flip_bytes(os.path.join(ws.cache_dir, gcrig.STORE_FILE), 2 * SIZE, FLIPS, seed=22)

    agent.start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                              "read over a corrupted cache")
    # A second pass reads the refetched chunks.
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data,
                              "second read over a repaired cache")
    m = agent.metrics()
    assert m.value("goldcache_cache_checksum_failures_total") > 0
    assert 0 < m.value("goldcache_datastore_read_bytes_total") < t.size, \
        "corrupted chunks must be refetched, good ones kept"


def test_flipped_bytes_while_agent_runs_never_reach_readers(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=23)
    agent = ws.agent(cache_size="256MiB").start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "first read")
    agent.wait_index_durable()

    flip_bytes(os.path.join(ws.cache_dir, gcrig.STORE_FILE), 2 * SIZE, FLIPS, seed=24)

    for block in (MiB, 64 * KiB):
        order = gcrig.block_orders(t.size // block, seed=25)["random"]
        bad = gcrig.read_compare(t.mnt_path, t.data, order, block)
        assert not bad, f"{len(bad)} blocks of {block} bytes were wrong, first at {sorted(bad)[:5]}"
