"""Which chunk size? Miss cost and read amplification against warm reads.

For each chunk size (default 256KiB, 1MiB, 4MiB), each phase over a fresh
agent and cache, with the template dropped from the host's page cache first
(so the datastore's reads come from its disk, not from RAM):
  sparse  one reader, 4 KiB O_DIRECT reads at uniformly random offsets
          (GOLDCACHE_BENCH_SPARSE reads, default 2048 = 8 MiB wanted, same
          offsets for every chunk size): the worst case of a boot's scattered
          reads. Datastore bytes / bytes wanted = read amplification; mean
          read latency (mostly misses, each waiting for a whole chunk)
  cold    8 concurrent readers each read the whole template once in random
          order with 64 KiB O_DIRECT reads (fio psync, 8 jobs): wall time,
          throughput, datastore read ops, bytes and mean latency per op
  warm    then, on the same agent, the now fully cached template: 4K randread
          QD32 and QD1, 1M seqread QD8 (one FUSE request spans 1 MiB)
  index   RocksDB's data (SST + WAL) after the agent's clean stop, and the
          number of chunk records
Prints one table. Environment: GOLDCACHE_BENCH_DIR (default /var/tmp),
GOLDCACHE_BENCH_MIB (template size, default 1024), GOLDCACHE_BENCH_RUNTIME
(seconds per warm run, default 10), GOLDCACHE_BENCH_CHUNKS (comma list),
GOLDCACHE_BENCH_SPARSE (reads in the sparse phase, 0 skips it),
GOLDCACHE_BENCH_NFS=1 (serve the datastore over NFSv3 from nfs-ganesha on
loopback and use goldcached's nfs:// backing, as tests/integration/nfsrig.py).
"""

import os
import sys
import time

from benchlib import (KiB, MiB, fio, fmt_bw, fmt_iops, require_tools, say, table, workspace,
                      write_random_file)

SIZE = int(os.environ.get("GOLDCACHE_BENCH_MIB", "1024")) * MiB
CHUNKS = os.environ.get("GOLDCACHE_BENCH_CHUNKS", "256KiB,1MiB,4MiB").split(",")
SPARSE = int(os.environ.get("GOLDCACHE_BENCH_SPARSE", "2048"))
NFS = os.environ.get("GOLDCACHE_BENCH_NFS", "") not in ("", "0")
TEMPLATE = "templates/bench.img"


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
    rig = None
    try:
        say(f"writing a {SIZE // MiB} MiB template in {ws.datastore}")
        write_random_file(ws.ds(TEMPLATE), SIZE, seed=9)
        source = ws.datastore
        if NFS:
            rig = nfsrig.GaneshaRig(ws.datastore, port=0, mnt_port=0).start()
            source = rig.url()
            say(f"ganesha pid {rig.ganesha.pid} serves {source}")

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

        rows, sparse_rows = [], []
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
                                    f"{r['lat_us'] / 1000:.2f} ms",
                                    f"{lat / ops * 1000:.2f} ms" if ops else "-"])

            agent, path = fresh_agent(chunk, tag)
            say(f"chunk {chunk}: cold storm, 8 readers x {SIZE // MiB} MiB in random 64K reads")
            t0 = time.monotonic()
            fio(path, rw="randread", bs="64k", iodepth=1, numjobs=8, runtime=0,
                extra=["--ioengine=psync", f"--size={SIZE}"])
            cold_s = time.monotonic() - t0
            ds_ops, ds_bytes, ds_lat = ds_counters(agent)

            say(f"chunk {chunk}: warm 4K randread QD32 and QD1, 1M seqread QD8")
            qd32 = fio(path, rw="randread", bs="4k", iodepth=32)
            qd1 = fio(path, rw="randread", bs="4k", iodepth=1)
            seq = fio(path, rw="read", bs="1M", iodepth=8)
            stop(agent)
            records = -(-SIZE // parse_size(chunk))
            rows.append([chunk, f"{cold_s:.1f} s", fmt_bw(8 * SIZE / cold_s), f"{ds_ops:.0f}",
                         f"{ds_bytes / MiB:.0f} MiB", f"{ds_lat / ds_ops * 1000:.2f} ms",
                         fmt_iops(qd32["iops"]), fmt_iops(qd1["iops"]),
                         f"{qd1['lat_us']:.0f} us", fmt_bw(seq["bw"]),
                         f"{records} / {index_bytes(agent.cache_dir) / KiB:.0f} KiB"])

        print(f"goldcache chunk-size bench: {SIZE // MiB} MiB template, datastore "
              f"{'NFSv3 (nfs-ganesha, loopback)' if NFS else 'local directory'} "
              f"(page cache dropped before each phase), {os.cpu_count()} CPUs")
        if sparse_rows:
            print(f"sparse: {SPARSE} random 4K reads, QD1, fresh cache")
            table(["chunk", "wanted", "ds ops", "ds read", "amplification", "read lat",
                   "ds op lat"], sparse_rows)
            print()
        print("cold: 8 readers x whole template, random 64K; warm: on the filled cache")
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
        if rig is not None:
            for p in rig.stop():
                say(f"nfsrig: {p}")


if __name__ == "__main__":
    sys.exit(main())
