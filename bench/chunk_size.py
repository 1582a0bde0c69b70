"""Which chunk size? Cold boot-storm time against warm random-read speed.

For each chunk size (default 256KiB, 1MiB, 4MiB), over a fresh cache:
  cold  8 concurrent readers each read the whole template once in random
        order with 64 KiB O_DIRECT reads (fio psync, 8 jobs): wall time,
        throughput, datastore read ops and bytes
  warm  then 4K randread QD32 and QD1 on the now fully cached template
Prints one table. Environment: GOLDCACHE_BENCH_DIR (default /var/tmp),
GOLDCACHE_BENCH_MIB (template size, default 1024), GOLDCACHE_BENCH_RUNTIME
(seconds per warm run, default 10), GOLDCACHE_BENCH_CHUNKS (comma list).
"""

import os
import sys
import time

from benchlib import (MiB, fio, fmt_bw, fmt_iops, require_tools, say, table, workspace,
                      write_random_file)

SIZE = int(os.environ.get("GOLDCACHE_BENCH_MIB", "1024")) * MiB
CHUNKS = os.environ.get("GOLDCACHE_BENCH_CHUNKS", "256KiB,1MiB,4MiB").split(",")
TEMPLATE = "templates/bench.img"


def main():
    require_tools()
    ws = workspace()
    try:
        say(f"writing a {SIZE // MiB} MiB template in {ws.datastore}")
        write_random_file(ws.ds(TEMPLATE), SIZE, seed=9)
        rows = []
        for chunk in CHUNKS:
            tag = chunk.lower()
            agent = ws.agent(chunk_size=chunk, cache_size=f"{SIZE * 2 // MiB}MiB",
                             mountpoint=os.path.join(ws.root, f"mnt-{tag}"),
                             cache_dir=os.path.join(ws.root, f"cache-{tag}"))
            os.mkdir(agent.mountpoint)
            os.mkdir(agent.cache_dir)
            agent.start()
            path = os.path.join(agent.mountpoint, TEMPLATE)

            say(f"chunk {chunk}: cold storm, 8 readers x {SIZE // MiB} MiB in random 64K reads")
            t0 = time.monotonic()
            fio(path, rw="randread", bs="64k", iodepth=1, numjobs=8, runtime=0,
                extra=["--ioengine=psync", f"--size={SIZE}"])
            cold_s = time.monotonic() - t0
            m = agent.metrics()
            ds_ops = m.value("goldcache_datastore_read_ops_total")
            ds_bytes = m.value("goldcache_datastore_read_bytes_total")

            say(f"chunk {chunk}: warm 4K randread QD32 and QD1")
            qd32 = fio(path, rw="randread", bs="4k", iodepth=32)
            qd1 = fio(path, rw="randread", bs="4k", iodepth=1)
            rows.append([chunk, f"{cold_s:.1f} s", fmt_bw(8 * SIZE / cold_s), f"{ds_ops:.0f}",
                         f"{ds_bytes / MiB:.0f} MiB", fmt_iops(qd32["iops"]),
                         fmt_iops(qd1["iops"]), f"{qd1['lat_us']:.0f} us"])
            if agent.stop() != 0:
                say(f"agent pid {agent.pid} did not exit 0")

        print(f"goldcache chunk-size bench: {SIZE // MiB} MiB template, 8 cold readers, "
              f"{os.cpu_count()} CPUs")
        table(["chunk", "cold storm", "cold rate", "ds ops", "ds read",
               "warm 4K QD32", "warm 4K QD1", "QD1 lat"], rows)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for p in ws.cleanup():
            say(f"cleanup: {p}")


if __name__ == "__main__":
    sys.exit(main())
