"""Shared pieces of goldcache's benchmarks: fio runs, test files, tables.

Benchmarks report ratios against baselines measured in the same run on the
same machine; absolute numbers from one machine say little about another.
"""

import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import gcrig  # noqa: E402,F401  (re-exported for the bench scripts)
from gcrig import GiB, KiB, MiB  # noqa: E402,F401

BENCH_BASE = os.environ.get("GOLDCACHE_BENCH_DIR", "/var/tmp")
RUNTIME_S = int(os.environ.get("GOLDCACHE_BENCH_RUNTIME", "10"))


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def require_tools():
    for tool in ("fio",):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (run ./scripts/setup.sh)")
    binary = gcrig.default_binary()
    if not os.access(binary, os.X_OK):
        sys.exit(f"bench: {binary} not built (run ./scripts/setup.sh)")


def write_random_file(path, size, seed=1, piece=64 * MiB):
    """Writes `size` pseudo-random bytes without holding them all in memory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        done, i = 0, 0
        while done < size:
            n = min(piece, size - done)
            f.write(gcrig.random_bytes(n, seed * 1_000_003 + i))
            done += n
            i += 1
        f.flush()
        os.fsync(f.fileno())


def read_through(path, block=MiB):
    """Reads a whole file once with O_DIRECT (a warm-up); returns bytes read."""
    total = 0
    with gcrig.DirectReader(path, block) as r:
        while True:
            n = len(r.pread(total, block))
            if n == 0:
                return total
            total += n


_engine = None


def io_engine(probe_file):
    """io_uring when this kernel and sandbox allow it, else libaio."""
    global _engine
    if _engine is None:
        _engine = "libaio"
        r = subprocess.run(["fio", "--name=probe", f"--filename={probe_file}", "--readonly",
                            "--direct=1", "--ioengine=io_uring", "--rw=read", "--bs=4k",
                            "--size=64k", "--output-format=json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        if r.returncode == 0:
            _engine = "io_uring"
        say(f"fio ioengine: {_engine}")
    return _engine


def fio(path, rw, bs, iodepth, numjobs=1, runtime=RUNTIME_S, extra=()):
    """Runs one fio job against `path` (read only, O_DIRECT); returns a dict with
    iops, bw (bytes/s), lat_us (mean completion latency), bytes, seconds."""
    args = ["fio", "--name=goldcache", f"--filename={path}", "--readonly", "--direct=1",
            f"--ioengine={io_engine(path)}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={iodepth}",
            f"--numjobs={numjobs}", "--group_reporting", "--output-format=json"]
    if runtime:
        args += [f"--runtime={runtime}", "--time_based", "--ramp_time=1"]
    if rw.startswith("rand"):
        args += ["--randrepeat=0"]
    args += list(extra)
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"fio failed ({r.returncode}): {' '.join(args)}\n{r.stderr}")
    # fio may print warnings before the JSON document.
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    job = doc["jobs"][0]
    rd = job["read"]
    return {
        "iops": rd["iops"],
        "bw": rd["bw_bytes"],
        "lat_us": rd["clat_ns"]["mean"] / 1000.0,
        "bytes": rd["io_bytes"],
        "seconds": job["job_runtime"] / 1000.0,
    }


def table(header, rows):
    """Prints a plain aligned table to stdout."""
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def fmt_iops(v):
    return f"{v / 1000:.1f}K" if v >= 1000 else f"{v:.0f}"


def fmt_bw(v):
    return f"{v / 1e9:.2f} GB/s" if v >= 1e9 else f"{v / 1e6:.0f} MB/s"


def die_with_parent():
    """In a child before exec: SIGKILL it when the bench dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class DelayProxy:
    """bench/delayproxy.py in front of an NFS server's port: every RPC arrives
    `delay_us` later, as across a network to a filer. Stopped by stop() (and
    with the bench, whatever happens)."""

    def __init__(self, target_port, delay_us):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "delayproxy.py"), str(target_port), str(delay_us)],
            stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        self.port = int(self.proc.stdout.readline())
        self.target_port = target_port
        self.delay_us = delay_us

    def url(self, url):
        """`url` of the server, through the proxy."""
        return url.replace(f"nfsport={self.target_port}", f"nfsport={self.port}")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def workspace():
    gcrig.clear_stale(BENCH_BASE, log=say)
    gcrig.clear_stale(log=say)
    return gcrig.Workspace(base=BENCH_BASE)


def tmpdir_under(ws, name):
    path = os.path.join(ws.root, name)
    os.mkdir(path)
    return path

