"""Which chunk size? Miss cost and read amplification against warm reads.

For each chunk size (default 256KiB, 1MiB, 4MiB), each phase over a fresh
agent and cache, with the template dropped from the host's page cache first
(so the datastore's reads come from its disk, not from RAM):
  sparse  one reader, 4 KiB O_DIRECT reads at uniformly random offsets
          (GOLDCACHE_BENCH_SPARSE reads, default 2048 = 8 MiB wanted, same
          offsets for every chunk size): the worst case of a boot's scattered
          reads. Datastore bytes / bytes wanted = read amplification; mean
          read latency (mostly misses, each waiting for a whole chunk)
  cold 1M seq  one reader, the whole template in 1 MiB sequential reads (the
          FUSE request size), QD1: how a miss's chunk size meets the request
  cold    8 concurrent readers each read the whole template once in random
          order with 64 KiB O_DIRECT reads (fio psync, 8 jobs): wall time,
          throughput, datastore read ops, bytes and mean latency per op
  warm    then, with every chunk size's agent mounted at once over its now
          fully cached template: 4K randread QD32 and QD1, 1M seqread QD8 (one
          FUSE request spans 1 MiB), the chunk sizes taking turns in
          GOLDCACHE_BENCH_ROUNDS rounds (default 3, rotating order): medians
  index   RocksDB's data (SST + WAL) after the agent's clean stop, and the
          number of chunk records
Prints one table. Environment: GOLDCACHE_BENCH_DIR (default /var/tmp),
GOLDCACHE_BENCH_MIB (template size, default 1024), GOLDCACHE_BENCH_RUNTIME
(seconds per warm run, default 10), GOLDCACHE_BENCH_CHUNKS (comma list),
GOLDCACHE_BENCH_SPARSE (reads in the sparse phase, 0 skips it),
GOLDCACHE_BENCH_NFS=1 (serve the datastore over NFSv3 from nfs-ganesha on
loopback and use goldcached's nfs:// backing, as tests/integration/nfsrig.py),
GOLDCACHE_BENCH_NFS_DELAY_US (with NFS: add this latency to every RPC through
bench/delayproxy.py, a filer's round trip). GOLDCACHE_BENCH_ROUNDS=0 skips the
warm runs (they never reach the datastore).
"""

import os
import subprocess
import sys
import time
from statistics import median

from benchlib import (DelayProxy, KiB, MiB, fio, fmt_bw, fmt_iops, require_tools, say, table,
                      workspace, write_random_file)

SIZE = int(os.environ.get("GOLDCACHE_BENCH_MIB", "1024")) * MiB
CHUNKS = os.environ.get("GOLDCACHE_BENCH_CHUNKS", "256KiB,1MiB,4MiB").split(",")
SPARSE = int(os.environ.get("GOLDCACHE_BENCH_SPARSE", "2048"))
NFS = os.environ.get("GOLDCACHE_BENCH_NFS", "") not in ("", "0")
NFS_DELAY_US = float(os.environ.get("GOLDCACHE_BENCH_NFS_DELAY_US", "0"))
ROUNDS = int(os.environ.get("GOLDCACHE_BENCH_ROUNDS", "3"))
TEMPLATE = "templates/bench.img"
WARM = [("qd32", dict(rw="randread", bs="4k", iodepth=32)),
        ("qd1", dict(rw="randread", bs="4k", iodepth=1)),
        ("seq", dict(rw="read", bs="1M", iodepth=8))]


def spread(results, key, fmt):
    """Median, and the range over the rounds."""
    vals = sorted(r[key] for r in results)
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt(vals[0])
    lo, hi = fmt(vals[0]), fmt(vals[-1])
    if " " in lo and lo.split(" ", 1)[1] == hi.split(" ", 1)[1]:  # one unit: say it once
        lo, hi = lo.split(" ", 1)[0], hi.split(" ", 1)[0]
    return f"{fmt(median(vals))} ({lo}-{hi})"


def parse_size(text):
    units = {"KIB": KiB, "MIB": MiB, "GIB": 1024 * MiB, "": 1}
    num = text.rstrip("KMGiBkmgib")
    return int(num) * units[text[len(num):].upper()]


def drop_from_page_cache(path):
    """Evicts one file's clean pages (the file was fsynced), nothing else."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ds_counters(agent):
    m = agent.metrics()
    return (m.value("goldcache_datastore_read_ops_total"),
            m.value("goldcache_datastore_read_bytes_total"),
            m.value("goldcache_datastore_read_latency_seconds_sum"))


def index_bytes(cache_dir):
    total = 0
    for root, _, files in os.walk(os.path.join(cache_dir, "index")):
        for f in files:
            if f.endswith((".sst", ".log")) and not f.startswith("LOG"):
                total += os.path.getsize(os.path.join(root, f))
    return total


def main():
    require_tools()
    if NFS:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "tests", "integration"))
        import nfsrig  # noqa: E402
        if not nfsrig.ganesha_available():
            sys.exit("bench: ganesha.nfsd not installed (run ./scripts/setup.sh)")
    ws = workspace()
    rig = proxy = None
    try:
        say(f"writing a {SIZE // MiB} MiB template in {ws.datastore}")
        write_random_file(ws.ds(TEMPLATE), SIZE, seed=9)
        source = ws.datastore
        if NFS:
            rig = nfsrig.GaneshaRig(ws.datastore, port=0, mnt_port=0).start()
            source = rig.url()
            say(f"ganesha pid {rig.ganesha.pid} serves {source}")
            if NFS_DELAY_US:
                proxy = DelayProxy(rig.port, NFS_DELAY_US)
                source = proxy.url(source)
                say(f"delay proxy pid {proxy.proc.pid}: +{NFS_DELAY_US:g} us per RPC, {source}")

        def fresh_agent(chunk, tag):
            agent = ws.agent(datastore=source, chunk_size=chunk,
                             cache_size=f"{SIZE * 2 // MiB}MiB",
                             mountpoint=os.path.join(ws.root, f"mnt-{tag}"),
                             cache_dir=os.path.join(ws.root, f"cache-{tag}"))
            os.mkdir(agent.mountpoint)
            os.mkdir(agent.cache_dir)
            drop_from_page_cache(ws.ds(TEMPLATE))
            agent.start()
            return agent, os.path.join(agent.mountpoint, TEMPLATE)

        def stop(agent):
            if agent.stop() != 0:
                say(f"agent pid {agent.pid} did not exit 0")

        rows, sparse_rows, seq_rows, cold, agents = [], [], [], {}, {}
        for chunk in CHUNKS:
            tag = chunk.lower()
            if SPARSE:
                agent, path = fresh_agent(chunk, f"{tag}-sparse")
                say(f"chunk {chunk}: sparse, {SPARSE} random 4K reads")
                r = fio(path, rw="randread", bs="4k", iodepth=1, runtime=0,
                        extra=["--ioengine=psync", f"--size={SIZE}", f"--number_ios={SPARSE}",
                               "--randrepeat=1", "--randseed=1234"])
                ops, nbytes, lat = ds_counters(agent)
                stop(agent)
                wanted = r["bytes"]
                sparse_rows.append([chunk, f"{wanted / MiB:.1f} MiB", f"{ops:.0f}",
                                    f"{nbytes / MiB:.0f} MiB", f"{nbytes / wanted:.0f}x",
                                    f"{r['seconds']:.2f} s", f"{r['lat_us'] / 1000:.2f} ms",
                                    f"{lat / ops * 1000:.2f} ms" if ops else "-"])

            agent, path = fresh_agent(chunk, f"{tag}-seq")
            say(f"chunk {chunk}: one cold reader, 1M sequential reads")
            r = fio(path, rw="read", bs="1M", iodepth=1, runtime=0,
                    extra=["--ioengine=psync", f"--size={SIZE}"])
            ops, nbytes, lat = ds_counters(agent)
            stop(agent)
            seq_rows.append([chunk, f"{r['seconds']:.2f} s", fmt_bw(r["bw"]), f"{ops:.0f}",
                             f"{r['lat_us'] / 1000:.2f} ms", f"{lat / ops * 1000:.2f} ms"])

            agent, path = fresh_agent(chunk, tag)
            say(f"chunk {chunk}: cold storm, 8 readers x {SIZE // MiB} MiB in random 64K reads")
            t0 = time.monotonic()
            fio(path, rw="randread", bs="64k", iodepth=1, numjobs=8, runtime=0,
                extra=["--ioengine=psync", f"--size={SIZE}"])
            cold[chunk] = (time.monotonic() - t0,) + ds_counters(agent)
            agents[chunk] = (agent, path)

        # Warm reads: every agent stays mounted with its filled cache, and the
        # chunk sizes take turns (rotating order each round), so that the load
        # of a shared machine falls on all of them alike. Medians are reported.
        warm = {c: {k: [] for k, _ in WARM} for c in CHUNKS}
        for rnd in range(ROUNDS):
            order = CHUNKS[rnd % len(CHUNKS):] + CHUNKS[:rnd % len(CHUNKS)]
            say(f"warm round {rnd + 1}/{ROUNDS}: {', '.join(order)}")
            for chunk in order:
                for key, job in WARM:
                    warm[chunk][key].append(fio(agents[chunk][1], **job))
        for chunk in CHUNKS:
            agent = agents[chunk][0]
            stop(agent)
            cold_s, ds_ops, ds_bytes, ds_lat = cold[chunk]
            records = -(-SIZE // parse_size(chunk))
            w = warm[chunk]
            rows.append([chunk, f"{cold_s:.1f} s", fmt_bw(8 * SIZE / cold_s), f"{ds_ops:.0f}",
                         f"{ds_bytes / MiB:.0f} MiB", f"{ds_lat / ds_ops * 1000:.2f} ms",
                         spread(w["qd32"], "iops", fmt_iops), spread(w["qd1"], "iops", fmt_iops),
                         f"{median(r['lat_us'] for r in w['qd1']):.0f} us" if w["qd1"] else "-",
                         spread(w["seq"], "bw", fmt_bw),
                         f"{records} / {index_bytes(agent.cache_dir) / KiB:.0f} KiB"])

        print(f"goldcache chunk-size bench: {SIZE // MiB} MiB template, datastore "
              f"{'NFSv3 (nfs-ganesha, loopback)' if NFS else 'local directory'}"
              f"{f', +{NFS_DELAY_US:g} us per RPC' if NFS and NFS_DELAY_US else ''} "
              f"(page cache dropped before each phase), {os.cpu_count()} CPUs")
        if sparse_rows:
            print(f"sparse: {SPARSE} random 4K reads, QD1, fresh cache")
            table(["chunk", "wanted", "ds ops", "ds read", "amplification", "reader waited",
                   "mean read lat", "ds op lat"], sparse_rows)
            print()
        print("cold 1M seq: one reader, 1 MiB sequential reads, QD1, fresh cache")
        table(["chunk", "time", "rate", "ds ops", "mean read lat", "ds op lat"], seq_rows)
        print()
        print("cold: 8 readers x whole template, random 64K; warm: on the filled cache, " +
              (f"median (min-max) of {ROUNDS} interleaved rounds" if ROUNDS else "skipped"))
        table(["chunk", "cold storm", "cold rate", "ds ops", "ds read", "ds op lat",
               "warm 4K QD32", "warm 4K QD1", "QD1 lat", "warm 1M QD8", "index recs/bytes"],
              rows)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for p in ws.cleanup():
            say(f"cleanup: {p}")
        if proxy is not None:
            proxy.stop()
        if rig is not None:
            for p in rig.stop():
                say(f"nfsrig: {p}")


if __name__ == "__main__":
    sys.exit(main())
