"""Cache-hit read performance through the goldcache mount, against baselines.

Three paths to one 2 GiB template file, measured in this run:
  a  local    the datastore file read directly (O_DIRECT), no FUSE
  b  fuse     goldcached with no rules: every file passthrough (no-cache FUSE)
  c  cache    goldcached with a template rule, after a full warm-up read: hits
Workloads (fio, O_DIRECT): 4K randread QD1, 4K randread QD32, 1M seqread QD8.
Prints a table and the ratios c/a and c/b. Environment: GOLDCACHE_BENCH_DIR
(where the files go, default /var/tmp), GOLDCACHE_BENCH_GIB (template size,
default 2), GOLDCACHE_BENCH_RUNTIME (seconds per fio run, default 10).
"""

import os
import sys

from benchlib import (GiB, MiB, fio, fmt_bw, fmt_iops, read_through, require_tools, say, table,
                      workspace, write_random_file)

SIZE = int(float(os.environ.get("GOLDCACHE_BENCH_GIB", "2")) * GiB)
TEMPLATE = "templates/bench.img"
WORKLOADS = [
    ("4K randread QD1", dict(rw="randread", bs="4k", iodepth=1)),
    ("4K randread QD32", dict(rw="randread", bs="4k", iodepth=32)),
    ("1M seqread QD8", dict(rw="read", bs="1M", iodepth=8)),
]


def cell(r, seq):
    return fmt_bw(r["bw"]) if seq else f"{fmt_iops(r['iops'])} ({r['lat_us']:.0f} us)"


def main():
    require_tools()
    ws = workspace()
    try:
        say(f"writing a {SIZE / GiB:g} GiB template in {ws.datastore}")
        write_random_file(ws.ds(TEMPLATE), SIZE, seed=7)

        plain = ws.agent(templates=(), nonpersistent=(),
                         mountpoint=os.path.join(ws.root, "mnt-passthrough"),
                         cache_dir=os.path.join(ws.root, "cache-passthrough"))
        os.mkdir(plain.mountpoint)
        os.mkdir(plain.cache_dir)
        cached = ws.agent(templates=("templates/**",), cache_size=f"{SIZE * 3 // 2 // MiB}MiB")
        plain.start()
        cached.start()
        say(f"passthrough agent pid {plain.pid}, template agent pid {cached.pid}")

        say("warm-up: one full read of the template through the template mount")
        read_through(ws.mnt(TEMPLATE))
        cached.wait_index_durable(timeout=120)
        warm = cached.metrics()
        say(f"warm-up fetched {warm.value('goldcache_datastore_read_bytes_total') / MiB:.0f} MiB "
            f"from the datastore; cache holds {warm.value('goldcache_cache_used_bytes') / MiB:.0f} MiB")

        paths = {"a": ws.ds(TEMPLATE), "b": os.path.join(plain.mountpoint, TEMPLATE),
                 "c": ws.mnt(TEMPLATE)}
        rows = []
        for name, job in WORKLOADS:
            seq = job["rw"] == "read"
            res = {}
            for k in "abc":
                say(f"{name} on {k}")
                res[k] = fio(paths[k], **job)
            key = "bw" if seq else "iops"
            rows.append([name, cell(res["a"], seq), cell(res["b"], seq), cell(res["c"], seq),
                         f"{res['c'][key] / res['a'][key]:.2f}",
                         f"{res['c'][key] / res['b'][key]:.2f}"])

        after = cached.metrics()
        refetched = (after.value("goldcache_datastore_read_bytes_total")
                     - warm.value("goldcache_datastore_read_bytes_total"))
        print(f"goldcache bench: {SIZE / GiB:g} GiB template, fio O_DIRECT, "
              f"{os.environ.get('GOLDCACHE_BENCH_RUNTIME', '10')} s per run, "
              f"{os.cpu_count()} CPUs")
        table(["workload", "a: local disk", "b: FUSE passthrough", "c: goldcache hits",
               "c/a", "c/b"], rows)
        print(f"during c, the datastore served {refetched / MiB:.1f} MiB "
              f"(0 means every read was a cache hit)")
        for a in (cached, plain):
            if a.stop() != 0:
                say(f"agent pid {a.pid} did not exit 0")
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for p in ws.cleanup():
            say(f"cleanup: {p}")


if __name__ == "__main__":
    sys.exit(main())
