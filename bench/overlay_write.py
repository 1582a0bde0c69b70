"""Write performance of a nonpersistent desktop through goldcached, against the
local disk written directly, both measured in this run.

Paths (one desktop disk file of GOLDCACHE_BENCH_GIB GiB, default 2):
  a  local      a fully written file on the same filesystem, written directly
                (O_DIRECT), no FUSE
  b  overlay    pool/desk.img through goldcached --nonpersistent 'pool/**' with the
                default RAM tier (--overlay-ram 256MiB): the writes land in RAM
                first, then spill to the disk tier in the cache dir
  c  spill      the same with --overlay-ram 64MiB: nearly every byte takes the
                spill path
Workloads (fio, O_DIRECT): 4K randwrite QD32 (IOPS), 1M sequential write QD8
(bandwidth). Each run opens the file afresh, so each overlay run starts empty
(reset on last close). A run stops after GOLDCACHE_BENCH_RUNTIME seconds
(default 10) or GOLDCACHE_BENCH_MAX_GIB GiB written (default 3x the file),
whichever comes first. Prints a table and the ratios b/a and c/a, then what
the agents counted: bytes spilled to disk, ENOSPC, bytes written to the
datastore (must be 0). Environment: GOLDCACHE_BENCH_DIR (default /var/tmp).
"""

import json
import os
import subprocess
import sys

from benchlib import (RUNTIME_S, GiB, MiB, fmt_bw, fmt_iops, io_engine, require_tools, say,
                      table, workspace)

SIZE = int(float(os.environ.get("GOLDCACHE_BENCH_GIB", "2")) * GiB)
MAX_BYTES = int(float(os.environ.get("GOLDCACHE_BENCH_MAX_GIB", str(3 * SIZE / GiB))) * GiB)
DESK = "pool/desk.img"
WORKLOADS = [
    ("4K randwrite QD32", dict(rw="randwrite", bs="4k", iodepth=32)),
    ("1M seqwrite QD8", dict(rw="write", bs="1M", iodepth=8)),
]
OVERLAYS = [("b", "256MiB"), ("c", "64MiB")]


def fio_write(path, rw, bs, iodepth, engine):
    """One O_DIRECT fio write job; returns iops, bw (bytes/s), lat_us, bytes, seconds."""
    args = ["fio", "--name=goldcache", f"--filename={path}", "--direct=1",
            f"--ioengine={engine}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={iodepth}",
            f"--size={SIZE}", f"--io_size={MAX_BYTES}", f"--runtime={RUNTIME_S}",
            "--group_reporting", "--output-format=json"]
    if rw.startswith("rand"):
        args += ["--randrepeat=0", "--norandommap"]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"fio failed ({r.returncode}): {' '.join(args)}\n{r.stderr}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    wr = job["write"]
    return {"iops": wr["iops"], "bw": wr["bw_bytes"], "lat_us": wr["clat_ns"]["mean"] / 1000.0,
            "bytes": wr["io_bytes"], "seconds": job["job_runtime"] / 1000.0}


def write_zeros(path, size, piece=64 * MiB):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    zeros = bytes(piece)
    with open(path, "wb") as f:
        for off in range(0, size, piece):
            f.write(zeros[:min(piece, size - off)])
        f.flush()
        os.fsync(f.fileno())


def counters(agent):
    m = agent.metrics()
    return {k: m.value(k) for k in ("goldcache_overlay_spilled_bytes_total",
                                    "goldcache_overlay_enospc_total",
                                    "goldcache_datastore_write_bytes_total")}


def cell(r, seq):
    return fmt_bw(r["bw"]) if seq else f"{fmt_iops(r['iops'])} ({r['lat_us']:.0f} us)"


def main():
    require_tools()
    ws = workspace()
    try:
        local = os.path.join(ws.root, "local", "desk.img")
        say(f"writing a {SIZE / GiB:g} GiB local file {local}")
        write_zeros(local, SIZE)
        os.makedirs(ws.ds("pool"))
        with open(ws.ds(DESK), "wb") as f:
            f.truncate(SIZE)  # the desktop's datastore file: a hole, never written

        agents = {}
        for key, ram in OVERLAYS:
            a = ws.agent(templates=(), nonpersistent=("pool/**",),
                         cache_size=f"{(MAX_BYTES + SIZE) // MiB}MiB",
                         extra_args=["--overlay-ram", ram],
                         mountpoint=os.path.join(ws.root, f"mnt-{key}"),
                         cache_dir=os.path.join(ws.root, f"cache-{key}"))
            os.mkdir(a.mountpoint)
            os.mkdir(a.cache_dir)
            a.start()
            agents[key] = a
            say(f"{key}: goldcached pid {a.pid}, --overlay-ram {ram}")
        engine = io_engine(local)

        paths = {"a": local}
        paths.update({k: os.path.join(a.mountpoint, DESK) for k, a in agents.items()})
        before = {k: counters(a) for k, a in agents.items()}
        rows = []
        for name, job in WORKLOADS:
            seq = job["rw"] == "write"
            key = "bw" if seq else "iops"
            res = {}
            for k in paths:
                say(f"{name} on {k}")
                res[k] = fio_write(paths[k], engine=engine, **job)
            rows.append([name] + [cell(res[k], seq) for k in paths]
                        + [f"{res[k][key] / res['a'][key]:.2f}" for k, _ in OVERLAYS])

        print(f"goldcache overlay write bench: {SIZE / GiB:g} GiB desktop disk, fio O_DIRECT "
              f"{engine}, {RUNTIME_S} s or {MAX_BYTES / GiB:g} GiB per run, "
              f"{os.cpu_count()} CPUs")
        table(["workload", "a: local disk"]
              + [f"{k}: overlay, RAM {ram}" for k, ram in OVERLAYS]
              + [f"{k}/a" for k, _ in OVERLAYS], rows)
        for k, ram in OVERLAYS:
            now = counters(agents[k])
            d = {n: now[n] - before[k][n] for n in now}
            print(f"{k} (RAM {ram}): spilled to disk "
                  f"{d['goldcache_overlay_spilled_bytes_total'] / MiB:.0f} MiB, "
                  f"ENOSPC {d['goldcache_overlay_enospc_total']:.0f}, "
                  f"written to the datastore {d['goldcache_datastore_write_bytes_total']:.0f} "
                  f"bytes (must be 0)")
        for a in agents.values():
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
