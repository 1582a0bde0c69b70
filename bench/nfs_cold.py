"""Cold and warm full reads of a template over a real NFS datastore.

One template (default 1 GiB, GOLDCACHE_BENCH_MIB) in an export served by
nfs-ganesha on loopback (tests/integration/nfsrig.py, free ports), read in
full, sequentially, three ways, each timed by the wall clock around it:

  nfs     `nfs-cat URL > /dev/null`: libnfs reading the file directly, NFSv3,
          no goldcache (the baseline)
  cold    goldcached --datastore nfs://... over a fresh, empty cache: every
          chunk is a miss fetched over NFS (fio, 1 MiB O_DIRECT reads)
  warm    the same read again through the same agent: every chunk a hit
  cold-dir  for orientation, the cold read through goldcached over the export
          directory itself (the POSIX datastore, no NFS): what filling the
          cache costs without the network

The cold and warm reads run at two queue depths, QD1 (one read at a time, as
a VM boots) and QD8 (fio iodepth 8), each QD with its own fresh agent and
cache; nfs-cat runs before each. Prints a table with seconds, MB/s, the
ratios cold/nfs and warm/nfs (in throughput: above 1 is faster than nfs-cat),
and what the NFS server read for each run (ganesha's /proc/PID/io rchar).
The export's file sits in the host's page cache throughout (it was just
written), for nfs-cat and goldcached alike.

Environment: GOLDCACHE_BENCH_DIR (default /var/tmp), GOLDCACHE_BENCH_MIB
(template size, default 1024), GOLDCACHE_BENCH_NFS_DELAY_US (default 0): adds
that much to every NFS RPC, for nfs-cat and goldcached alike, through
bench/delayproxy.py (a filer's round trip; 500 is typical).
"""

import os
import subprocess
import sys
import time

from benchlib import (DelayProxy, MiB, fio, gcrig, require_tools, say, table, workspace,
                      write_random_file)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import nfsrig  # noqa: E402

SIZE = int(os.environ.get("GOLDCACHE_BENCH_MIB", "1024")) * MiB
TEMPLATE = "templates/bench.img"
DEPTHS = (1, 8)
DELAY_US = float(os.environ.get("GOLDCACHE_BENCH_NFS_DELAY_US", "0"))


def mbps(seconds):
    return f"{SIZE / seconds / 1e6:.0f} MB/s"


def main():
    require_tools()
    if not nfsrig.ganesha_available():
        sys.exit("bench: ganesha.nfsd not installed (run ./scripts/setup.sh)")
    ws = workspace()
    rig = proxy = None
    try:
        say(f"writing a {SIZE // MiB} MiB template in {ws.datastore}")
        write_random_file(ws.ds(TEMPLATE), SIZE, seed=11)
        rig = nfsrig.GaneshaRig(ws.datastore, port=0, mnt_port=0).start()
        url = rig.url()
        say(f"ganesha pid {rig.ganesha.pid} serves {url}")
        if DELAY_US:
            proxy = DelayProxy(rig.port, DELAY_US)
            url = proxy.url(url)
            say(f"delay proxy pid {proxy.proc.pid}: +{DELAY_US:g} us per RPC, {url}")

        def rchar():
            return gcrig.proc_io(rig.ganesha.pid)["rchar"]

        def timed(what, fn):
            r0, t0 = rchar(), time.monotonic()
            fn()
            secs, served = time.monotonic() - t0, rchar() - r0
            say(f"{what}: {secs:.2f} s, {mbps(secs)}; ganesha read {served / MiB:.0f} MiB")
            return secs, served

        def nfs_cat():
            with open(os.devnull, "wb") as null:
                turl = proxy.url(rig.url(TEMPLATE)) if proxy else rig.url(TEMPLATE)
                subprocess.run(["nfs-cat", turl], stdout=null, check=True, timeout=1800)

        def agent_over(source, tag):
            agent = ws.agent(datastore=source, cache_size=f"{SIZE * 2 // MiB}MiB",
                             mountpoint=os.path.join(ws.root, f"mnt-{tag}"),
                             cache_dir=os.path.join(ws.root, f"cache-{tag}"))
            os.mkdir(agent.mountpoint)
            os.mkdir(agent.cache_dir)
            return agent.start(), os.path.join(agent.mountpoint, TEMPLATE)

        def reader(path, qd):
            return lambda: fio(path, rw="read", bs="1M", iodepth=qd, runtime=0,
                               extra=[f"--size={SIZE}"])

        rows = []
        for qd in DEPTHS:
            nfs_s, nfs_served = timed(f"QD{qd}: nfs-cat", nfs_cat)
            agent, path = agent_over(url, f"qd{qd}")
            cold_s, cold_served = timed(f"QD{qd}: cold through goldcached", reader(path, qd))
            fetched = agent.metrics().value("goldcache_datastore_read_bytes_total")
            warm_s, warm_served = timed(f"QD{qd}: warm through goldcached", reader(path, qd))
            refetched = agent.metrics().value("goldcache_datastore_read_bytes_total") - fetched
            if agent.stop() != 0:
                say(f"agent pid {agent.pid} did not exit 0")

            agent, path = agent_over(ws.datastore, f"dir-qd{qd}")
            dir_s, _ = timed(f"QD{qd}: cold through goldcached over the directory",
                             reader(path, qd))
            if agent.stop() != 0:
                say(f"agent pid {agent.pid} did not exit 0")
            rows.append([f"1M seq read QD{qd}",
                         f"{nfs_s:.2f} s  {mbps(nfs_s)}", f"{cold_s:.2f} s  {mbps(cold_s)}",
                         f"{warm_s:.2f} s  {mbps(warm_s)}",
                         f"{nfs_s / cold_s:.2f}", f"{nfs_s / warm_s:.2f}",
                         f"{dir_s:.2f} s  {mbps(dir_s)}",
                         f"{nfs_served / MiB:.0f} / {cold_served / MiB:.0f} / "
                         f"{warm_served / MiB:.0f} MiB",
                         f"{fetched / MiB:.0f} / {refetched / MiB:.0f} MiB"])

        print(f"goldcache NFS cold-read bench: {SIZE // MiB} MiB template, NFSv3 from "
              f"nfs-ganesha (VFS FSAL) on loopback"
              f"{f' +{DELAY_US:g} us per RPC' if DELAY_US else ''}, {os.cpu_count()} CPUs; "
              f"ratios are throughput against nfs-cat (above 1: faster)")
        table(["workload", "nfs: nfs-cat", "cold: goldcached", "warm: goldcached",
               "cold/nfs", "warm/nfs", "cold-dir: no NFS", "ganesha read nfs/cold/warm",
               "agent fetched cold/warm"], rows)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for p in ws.cleanup():  # agents first: they hold NFS sessions to the rig
            say(f"cleanup: {p}")
        if proxy is not None:
            proxy.stop()
        if rig is not None:
            for p in rig.stop():
                say(f"nfsrig: {p}")


if __name__ == "__main__":
    sys.exit(main())
