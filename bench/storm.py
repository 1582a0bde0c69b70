"""bench/storm: a VDI storm over real NFS, with and without goldcache's cache.

One command; see bench/README.md. For each N (desktops), in the same run and
against the same filer, three agents in turn:

  off    goldcached --read-cache off: every template and desktop-base read
         goes to the filer (the "no goldcache" baseline; writes still stay
         on the host)
  cold   goldcached over an empty cache
  warm   goldcached restarted over the cache the cold run filled

Each desktop is its own qemu-io process (the QEMU block layer, cache=none:
O_DIRECT) on its own qcow2 linked clone of the template (one desktop, for
N >= 2, on a raw full clone), through the goldcache mount, over NFSv3 from
nfs-ganesha on loopback with a filer's round trip added to every RPC by
bench/delayproxy.py. The workload (bench/storm_workload.py) is generated from
a fixed seed; every read is checked against what the desktop's disk must
hold (the template's bytes or the desktop's own writes).

Phases (--phases): boot, steady, sweep (the antivirus scan), reboot. A phase
starts every desktop's qemu-io at once; a desktop's disk is also held open
by the harness between its phases, so its overlay lives from boot to
shutdown (the VM runs), and a reboot closes everything: the agent discards
the overlay on the last close.

Measured per phase: every op's latency as qemu-io reports it (its clock
around the block-layer request: ops/sec with 4 decimals, i.e. better than
1 us), each desktop's wall time (its process from spawn to exit; for boot
phases, its boot time), the agent's /metrics (read latency histograms by
source, datastore bytes, ops and latency, overlay tiers, spills) and /proc
(agent CPU, peak RSS), ganesha's /proc/PID/io and CPU, the delay proxy's and
qemu-io's CPU, and the whole host's CPU (to tell the harness's and the other
users' load from the agent's).

Writes markdown (report.md, also printed), results.json and storm.png to
--out. Exit status 1 when a read returned wrong bytes, an IO failed, or
anything reached the datastore (loudly), 0 otherwise.
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import gcrig  # noqa: E402
import nfsrig  # noqa: E402
import storm_workload as wl  # noqa: E402
from storm_workload import GiB, KiB, MiB  # noqa: E402

TEMPLATE = "templates/gold.img"
CHUNK = MiB  # goldcached's default chunk size; the bench does not change it
MODES = ("off", "cold", "warm")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def say(msg: str) -> None:
    print(f"storm: {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 64MiB)")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": GiB * 1024}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def fmt_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# ---------------------------------------------------------------------------
# /proc


def proc_cpu(pid: int) -> Optional[float]:
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


def proc_status_kib(pid: int, key: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_io(pid: int) -> dict:
    try:
        return gcrig.proc_io(pid)
    except OSError:
        return {}


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, all CPUs."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------
# Metrics


class Scrape:
    """One /metrics scrape, summed over labels we do not ask about."""

    def __init__(self, text: str):
        self.m = gcrig.parse_metrics(text)

    def value(self, name: str, **labels) -> Optional[float]:
        return self.m.value(name, default=None, **labels)

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({l[label] for n, l, _ in self.m.samples if n == name and label in l})

    def buckets(self, name: str, **labels) -> dict[float, float]:
        out: dict[float, float] = {}
        for n, l, v in self.m.samples:
            if n == name + "_bucket" and all(l.get(k) == want for k, want in labels.items()):
                le = float(l["le"])
                out[le] = out.get(le, 0.0) + v
        return out


def delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else b - a


def hist_delta(m0: Scrape, m1: Scrape, name: str, **labels) -> dict:
    """Count and quantiles (seconds) of what a histogram saw between two scrapes."""
    b0, b1 = m0.buckets(name, **labels), m1.buckets(name, **labels)
    if not b1:
        return {}
    d = [(le, b1[le] - b0.get(le, 0.0)) for le in b1]
    count = max((c for _, c in d), default=0)
    out = {"count": int(count)}
    for q, key in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
        out[key] = wl.bucket_quantile(d, q)
    return out


# ---------------------------------------------------------------------------
# Streams: what each desktop runs, compact


@dataclass
class Stream:
    """One desktop's ops for one phase, as qemu-io commands in `path`, with
    what parsing its output needs."""
    path: str
    kinds: bytes          # b'r' / b'w' per IO (sleeps are not here)
    offs: array.array
    lens: array.array
    vlens: array.array    # verified bytes of a read
    cls: bytes            # b't' template, b'o' own writes, b'm' mixed, b'-' write
    sleep_ms: int = 0
    # 1 MiB chunks of the template a cold cache must fetch for this phase:
    # those template-backed reads touch (read_chunks), and those writes touch
    # (write_chunks: a qcow2 write into a new cluster reads the rest of the
    # cluster from the backing file)
    read_chunks: frozenset = frozenset()
    write_chunks: frozenset = frozenset()

    @property
    def ios(self) -> int:
        return len(self.kinds)


def _generate(args) -> list[tuple]:
    """Worker: writes desktop `index`'s command files; returns Stream fields."""
    (index, size, seed, boot_fraction, phase_names, steady_s, steady_iops, outdir, generation,
     changed) = args
    work = wl.Workload(size, seed, boot_fraction, generation=generation, changed_fraction=changed)
    phases = wl.make_phases(phase_names, steady_s, steady_iops)
    out = []
    for ph, ops in zip(phases, wl.streams(work, index, phases)):
        path = os.path.join(outdir, f"d{index:02d}.{ph.name}.qemu-io")
        kinds, cls = bytearray(), bytearray()
        offs, lens, vlens = array.array("q"), array.array("q"), array.array("q")
        sleep_ms = 0
        with open(path, "w", encoding="ascii") as f:
            f.write("\n".join(op.command() for op in ops))
            f.write("\n")
        for op in ops:
            if op.kind == "s":
                sleep_ms += op.off
                continue
            kinds.append(ord(op.kind))
            offs.append(op.off)
            lens.append(op.length)
            vlens.append(op.vlen if op.kind == "r" else 0)
            cls.append(ord({"tmpl": "t", "own": "o", "mixed": "m"}.get(op.cls, "-")))
        rch = frozenset(c for o in ops if o.kind == "r" and o.cls != "own"
                        for c in range(o.off // CHUNK, (o.off + o.length - 1) // CHUNK + 1))
        wch = frozenset(o.off // CHUNK for o in ops if o.kind == "w")
        out.append((path, bytes(kinds), offs, lens, vlens, bytes(cls), sleep_ms, rch, wch))
    return out


def generate_streams(n_desktops: int, cfg, outdir: str, phases: Optional[list[str]] = None,
                     generation: int = 0) -> list[list[Stream]]:
    os.makedirs(outdir, exist_ok=True)
    jobs = [(i, cfg.template_size, cfg.seed, cfg.boot_fraction, phases or cfg.phases,
             cfg.steady_seconds, cfg.steady_iops, outdir, generation, cfg.patch_fraction)
            for i in range(n_desktops)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(NCPU, n_desktops)) as ex:
        return [[Stream(*fields) for fields in res] for res in ex.map(_generate, jobs)]


# ---------------------------------------------------------------------------
# qemu-io output

_RESULT = re.compile(r"(read|wrote) (\d+)/(\d+) bytes at offset (\d+)")
_STATS = re.compile(r"and ([0-9.]+|inf|nan) ops/sec\)")
_PATTERN_FAIL = "Pattern verification failed"
_FAILED = re.compile(r"^(read|write) failed: (.*)")


@dataclass
class DesktopPhase:
    """What one desktop did in one phase."""
    index: int
    disk: str
    wall: float = 0.0
    rc: Optional[int] = None
    cpu: float = 0.0          # qemu-io's user + system CPU
    read_lat: dict = field(default_factory=lambda: {"t": [], "o": [], "m": []})
    write_lat: list = field(default_factory=list)
    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    verified_bytes: int = 0
    verify_failures: int = 0
    io_errors: int = 0
    missing: int = 0          # ops qemu-io never reported (it died, or output was odd)
    first_problem: str = ""


def parse_output(text: str, stream: Stream, rec: DesktopPhase) -> None:
    lines = [ln.rpartition("qemu-io> ")[2] for ln in text.splitlines()]
    i, k, n = 0, 0, stream.ios
    pattern_failed = False
    while i < len(lines) and k < n:
        line = lines[i]
        i += 1
        if line.startswith(_PATTERN_FAIL):
            pattern_failed = True
            if not rec.first_problem:
                rec.first_problem = f"{line} (op {k} of {stream.path})"
            continue
        m = _FAILED.match(line)
        if m:
            rec.io_errors += 1
            if not rec.first_problem:
                rec.first_problem = f"{line} (op {k}: {chr(stream.kinds[k])} "\
                                    f"{stream.offs[k]} {stream.lens[k]})"
            k += 1
            pattern_failed = False
            continue
        m = _RESULT.match(line)
        if not m:
            continue
        kind = "r" if m.group(1) == "read" else "w"
        off, done, want = int(m.group(4)), int(m.group(2)), int(m.group(3))
        stats = _STATS.search(lines[i]) if i < len(lines) else None
        i += 1
        if chr(stream.kinds[k]) != kind or stream.offs[k] != off:
            rec.missing += n - k
            rec.first_problem = rec.first_problem or (
                f"output out of step at op {k} of {stream.path}: {line!r}")
            return
        ops_per_s = float(stats.group(1)) if stats else float("nan")
        lat = 1.0 / ops_per_s if ops_per_s > 0 and math.isfinite(ops_per_s) else 0.0
        if done != want:
            rec.io_errors += 1
        if kind == "r":
            rec.reads += 1
            rec.read_bytes += done
            rec.read_lat[chr(stream.cls[k])].append(lat)
            if pattern_failed:
                rec.verify_failures += 1
            else:
                rec.verified_bytes += stream.vlens[k]
        else:
            rec.writes += 1
            rec.write_bytes += done
            rec.write_lat.append(lat)
        pattern_failed = False
        k += 1
    if k < n:
        rec.missing += n - k
        rec.first_problem = rec.first_problem or (
            f"qemu-io reported {k} of {n} ops of {stream.path} (rc {rec.rc}): "
            + " | ".join(lines[-3:]))


# ---------------------------------------------------------------------------
# The rig


class Rig:
    """ganesha + delay proxy over one workspace's datastore; agents in turn."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ws: Optional[gcrig.Workspace] = None
        self.nfs: Optional[nfsrig.GaneshaRig] = None
        self.proxy: Optional[subprocess.Popen] = None
        self.source = ""
        self.live_pids: set[int] = set()
        self.lock = threading.Lock()

    def start(self):
        cfg = self.cfg
        gcrig.clear_stale(cfg.workdir, log=say)
        gcrig.clear_stale(log=say)
        self.ws = gcrig.Workspace(base=cfg.workdir, keep=cfg.keep)
        say(f"workspace {self.ws.root}")
        return self

    def provision(self, template: wl.Template, n_qcow2: int, n_raw: int) -> None:
        ws = self.ws
        os.makedirs(ws.ds("templates"), exist_ok=True)
        os.makedirs(ws.ds("pool"), exist_ok=True)
        say(f"writing the {fmt_size(template.size)} template and {n_raw} raw clone(s), "
            f"{n_qcow2} qcow2 linked clones")
        template.write(ws.ds(TEMPLATE))
        for j in range(n_raw):
            template.write(ws.ds(f"pool/vmraw{j}.img"))
        for i in range(n_qcow2):
            r = gcrig.run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                                "../" + TEMPLATE, f"vm{i:02d}.qcow2"], cwd=ws.ds("pool"))
            if r.returncode != 0:
                raise RuntimeError(f"qemu-img create: {r.stdout}")

    def write_generation(self, template: wl.Template, n_raw: int) -> None:
        """Patch day: the template's new generation replaces it, written beside
        it and renamed over it over NFS (as an admin copies a patched image onto
        the filer; written behind ganesha's back, its caches would serve the
        old file for a minute), and the raw full clones are recomposed from it
        the same way. Through a helper agent whose rules make every file
        passthrough: its writes and renames are NFS calls."""
        cache_dir = os.path.join(self.ws.root, "cache-admin")
        agent = self.helper_agent(cache_dir, passthrough=True)
        try:
            for rel in [TEMPLATE] + [f"pool/vmraw{j}.img" for j in range(n_raw)]:
                path = os.path.join(agent.mountpoint, rel)
                template.write(path + ".patching")
                os.replace(path + ".patching", path)
        finally:
            agent.stop(timeout=60)
            shutil.rmtree(cache_dir, ignore_errors=True)

    def helper_agent(self, cache_dir: str, passthrough: bool = False) -> gcrig.Agent:
        """An agent over the datastore for a chore (patching, publishing,
        removing manifests), started for it alone: its datastore traffic is
        not the measured host's. The caller stops it."""
        mnt = os.path.join(self.ws.root, "mnt-helper")
        os.makedirs(mnt, exist_ok=True)
        rules = {"templates": (), "nonpersistent": ()} if passthrough else {
            "templates": ("templates/**",), "nonpersistent": ("pool/**",)}
        agent = self.ws.agent(datastore=self.source, mountpoint=mnt, cache_dir=cache_dir,
                              cache_size=fmt_size(self.cfg.cache_size), **rules)
        return agent.start(timeout=60)

    def publish(self, cache_dir: str, n_raw: int) -> list[dict]:
        """`goldcache publish` of the template and the raw clones, by an agent
        over `cache_dir` (the host whose boots recorded the trace the
        manifest carries)."""
        agent = self.helper_agent(cache_dir)
        try:
            out = []
            for rel in [TEMPLATE] + [f"pool/vmraw{j}.img" for j in range(n_raw)]:
                r = agent.cli("--json", "publish", os.path.join(agent.mountpoint, rel))
                out.append(json.loads(r.stdout))
            return out
        finally:
            agent.stop(timeout=60)

    def remove_manifests(self, n_raw: int) -> None:
        """Over NFS (manifests are passthrough files), so that ganesha knows."""
        cache_dir = os.path.join(self.ws.root, "cache-admin")
        agent = self.helper_agent(cache_dir, passthrough=True)
        try:
            for rel in [TEMPLATE] + [f"pool/vmraw{j}.img" for j in range(n_raw)]:
                try:
                    os.unlink(os.path.join(agent.mountpoint, rel + ".goldcache-manifest"))
                except FileNotFoundError:
                    pass
        finally:
            agent.stop(timeout=60)
            shutil.rmtree(cache_dir, ignore_errors=True)

    def start_nfs(self) -> None:
        self.nfs = nfsrig.GaneshaRig(self.ws.datastore, port=0, mnt_port=0,
                                     state_dir=os.path.join(self.ws.root, "nfsrig")).start()
        url = self.nfs.url()
        if self.cfg.delay_us > 0:
            self.proxy = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "delayproxy.py"), str(self.nfs.port),
                 str(self.cfg.delay_us)], stdout=subprocess.PIPE, text=True,
                preexec_fn=gcrig._die_with_parent)
            port = int(self.proxy.stdout.readline())
            url = url.replace(f"nfsport={self.nfs.port}", f"nfsport={port}")
        self.source = url
        say(f"ganesha pid {self.nfs.ganesha.pid}, delay proxy "
            f"{'pid %d, +%g us per RPC' % (self.proxy.pid, self.cfg.delay_us) if self.proxy else 'off'}"
            f": {url}")

    def datastore_snapshot(self) -> dict:
        """(size, mtime, ctime, inode) of every file on the datastore: a write
        through NFS changes mtime or ctime."""
        snap = {}
        for root, _, files in os.walk(self.ws.datastore):
            for name in files:
                p = os.path.join(root, name)
                s = os.lstat(p)
                snap[os.path.relpath(p, self.ws.datastore)] = (s.st_size, s.st_mtime_ns,
                                                               s.st_ctime_ns, s.st_ino)
        return snap

    def kill_clients(self) -> None:
        with self.lock:
            pids = list(self.live_pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.kill_clients()
        problems = []
        if self.ws is not None:
            problems += self.ws.cleanup()  # agents first: they hold NFS sessions
        if self.proxy is not None:
            self.proxy.kill()
            self.proxy.wait()
        if self.nfs is not None:
            problems += self.nfs.stop()
        for p in problems:
            say(f"cleanup: {p}")


def agent_flags(binary: str) -> set[str]:
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", r.stdout + r.stderr))


# ---------------------------------------------------------------------------
# One run: N desktops, one mode


@dataclass
class DiskRef:
    index: int
    rel: str
    fmt: str


class Run:
    def __init__(self, rig: Rig, cfg, n: int, mode: str, streams: list[list[Stream]],
                 cache_dir: str, flags: set[str]):
        self.rig, self.cfg, self.n, self.mode = rig, cfg, n, mode
        self.streams = streams
        self.cache_dir = cache_dir
        self.flags = flags
        raw = min(cfg.raw_clones, n - 1) if n >= 2 else 0
        self.disks = [DiskRef(i, f"pool/vm{i:02d}.qcow2", "qcow2") for i in range(n - raw)]
        self.disks += [DiskRef(n - raw + j, f"pool/vmraw{j}.img", "raw") for j in range(raw)]
        self.holders: list[int] = []
        # What a perfect cold cache fetched so far in this run: template chunks,
        # each raw clone's chunks, the qcow2 clone files (their own datastore bytes).
        self.fetched = {"qcow2": set(), "raw": {}, "clones": set()}
        self.agent: Optional[gcrig.Agent] = None
        self.phases: list[dict] = []
        self.summary: dict = {}
        self.desktops: dict[int, dict] = {}

    def agent_args(self) -> list[str]:
        cfg, extra = self.cfg, []
        want = [("--overlay-ram", fmt_size(cfg.overlay_ram)),
                ("--overlay-ram-host", fmt_size(cfg.overlay_ram_host)),
                ("--settle", "0s")]  # the template was written long before the 8:00 storm
        if self.mode == "off":
            want.append(("--read-cache", "off"))
        for flag, value in want:
            if flag in self.flags:
                extra += [flag, value]
            elif flag == "--read-cache":
                raise RuntimeError("this goldcached has no --read-cache: no 'off' baseline")
        return extra + list(cfg.agent_args)

    def start_agent(self) -> None:
        ws = self.rig.ws
        tag = f"n{self.n}-{self.mode}"
        mnt = os.path.join(ws.root, f"mnt-{tag}")
        os.makedirs(mnt, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.agent = ws.agent(datastore=self.rig.source, mountpoint=mnt, cache_dir=self.cache_dir,
                              cache_size=fmt_size(self.cfg.cache_size),
                              templates=("templates/**",), nonpersistent=("pool/**",),
                              settle=None,  # agent_args() says it, when the binary knows it
                              extra_args=self.agent_args())
        self.agent.start(timeout=60)

    def path(self, d: DiskRef) -> str:
        return os.path.join(self.agent.mountpoint, d.rel)

    def open_disks(self) -> None:
        self.holders = [os.open(self.path(d), os.O_RDONLY) for d in self.disks]

    def close_disks(self) -> None:
        for fd in self.holders:
            os.close(fd)
        self.holders = []
        rels = {d.rel for d in self.disks}

        def closed():
            try:
                live = self.agent.desktops()
            except (AssertionError, OSError, ValueError, KeyError):
                return False
            return all(live.get(r) is None or live[r]["open_handles"] == 0 for r in rels)

        gcrig.wait_until(closed, f"the {len(rels)} desktops of N={self.n} are closed",
                         timeout=120)

    def scrape(self) -> Scrape:
        return Scrape(self.agent.get("/metrics", timeout=30).decode("utf-8"))

    def counters(self) -> dict:
        nfs = self.rig.nfs
        gio = proc_io(nfs.ganesha.pid)
        return {
            "t": time.monotonic(),
            "agent_cpu": proc_cpu(self.agent.pid),
            "ganesha_cpu": proc_cpu(nfs.ganesha.pid),
            "ganesha_rchar": gio.get("rchar"),
            "ganesha_write_bytes": gio.get("write_bytes"),
            "proxy_cpu": proc_cpu(self.rig.proxy.pid) if self.rig.proxy else None,
            "self_cpu": self_cpu(),
            "host": host_cpu(),
            "load": loadavg(),
        }

    # -- one phase --

    def run_phase(self, pi: int, phase: wl.Phase) -> dict:
        if phase.reopen:
            self.close_disks()
            self.open_disks()
        cfg = self.cfg
        outdir = os.path.join(cfg.out, "raw", f"n{self.n}-{self.mode}")
        os.makedirs(outdir, exist_ok=True)
        recs = [DesktopPhase(d.index, d.rel) for d in self.disks]
        m0, c0 = self.scrape(), self.counters()
        done = threading.Event()
        remaining = [len(self.disks)]
        starts = {}

        def waiter(pid: int, rec: DesktopPhase) -> None:
            _, status, ru = os.wait4(pid, 0)
            rec.wall = time.monotonic() - starts[pid]
            rec.rc = os.waitstatus_to_exitcode(status)
            rec.cpu = ru.ru_utime + ru.ru_stime
            with self.rig.lock:
                self.rig.live_pids.discard(pid)
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        threads = []
        t_start = time.monotonic()
        for d, rec in zip(self.disks, recs):
            stream = self.streams[d.index][pi]
            out = os.path.join(outdir, f"d{d.index:02d}.{phase.name}.out")
            argv = ["qemu-io", "-f", d.fmt, "-t", "none", "-i", cfg.aio, self.path(d)]
            fa = [(os.POSIX_SPAWN_OPEN, 0, stream.path, os.O_RDONLY, 0),
                  (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                  (os.POSIX_SPAWN_DUP2, 1, 2)]
            t = time.monotonic()
            pid = os.posix_spawnp("qemu-io", argv, os.environ, file_actions=fa, setsid=True)
            starts[pid] = t
            with self.rig.lock:
                self.rig.live_pids.add(pid)
            th = threading.Thread(target=waiter, args=(pid, rec), daemon=True)
            th.start()
            threads.append(th)
        spawn_s = time.monotonic() - t_start  # the last desktop started this much later
        timeout = cfg.phase_timeout
        if not done.wait(timeout):
            say(f"N={self.n} {self.mode} {phase.name}: desktops still running after "
                f"{timeout:.0f} s; killing them")
            self.rig.kill_clients()
            done.wait(30)
        wall = time.monotonic() - t_start
        for th in threads:
            th.join(5)
        m1, c1 = self.scrape(), self.counters()
        for d, rec in zip(self.disks, recs):
            stream = self.streams[d.index][pi]
            out = os.path.join(outdir, f"d{d.index:02d}.{phase.name}.out")
            with open(out, encoding="utf-8", errors="replace") as f:
                parse_output(f.read(), stream, rec)
            if rec.rc not in (0, None) and not (rec.verify_failures or rec.io_errors
                                                or rec.missing):
                rec.io_errors += 1
                rec.first_problem = rec.first_problem or f"qemu-io exited {rec.rc} ({out})"
            if not cfg.keep_raw:
                os.unlink(out)
        res = self.phase_result(phase, recs, wall, m0, m1, c0, c1)
        res["spawn_s"] = spawn_s
        res["ideal_filer"] = self.ideal_filer(pi) if self.mode == "cold" else None
        return res

    def ideal_filer(self, pi: int) -> dict:
        """What a perfect cold cache (1 MiB chunks, single-flight, no eviction)
        would fetch in this phase: the template's chunks that the qcow2
        desktops touch for the first time in this run, and each raw clone's own."""
        tmpl, raw, clones = set(), 0, 0
        for d in self.disks:
            st = self.streams[d.index][pi]
            # qemu probes O_DIRECT alignment with small reads at offset 0 of
            # every file it opens: the backing template's first chunk, a raw
            # clone's first chunk.
            if d.fmt == "qcow2":
                new = (st.read_chunks | st.write_chunks | {0}) - self.fetched["qcow2"]
                tmpl |= new
                if d.rel not in self.fetched["clones"]:
                    # the clone file itself (header, L1 and refcount tables): a few
                    # hundred KiB on the datastore, one per desktop
                    self.fetched["clones"].add(d.rel)
                    clones += min(CHUNK, os.path.getsize(self.rig.ws.ds(d.rel)))
            else:
                seen = self.fetched["raw"].setdefault(d.rel, set())
                new = (st.read_chunks | {0}) - seen
                seen |= new
                raw += len(new)
        self.fetched["qcow2"] |= tmpl
        return {"template": len(tmpl) * CHUNK, "raw": raw * CHUNK, "clones": clones}

    def phase_result(self, phase, recs, wall, m0, m1, c0, c1) -> dict:
        reads = {c: sorted(x for r in recs for x in r.read_lat[c]) for c in "tom"}
        all_reads = sorted(x for c in "tom" for x in reads[c])
        writes = sorted(x for r in recs for x in r.write_lat)
        walls = sorted(r.wall for r in recs)

        def q(vals):
            return {"p50": wl.percentile(vals, 0.5), "p99": wl.percentile(vals, 0.99),
                    "p999": wl.percentile(vals, 0.999), "n": len(vals)}

        agent_hist = {}
        for src in m1.label_values("goldcache_read_latency_seconds_bucket", "source"):
            agent_hist[src] = hist_delta(m0, m1, "goldcache_read_latency_seconds", source=src)
        busy = c1["host"][0] - c0["host"][0]
        res = {
            "phase": phase.name, "boot": phase.boot, "wall": wall,
            "desktop_wall": q(walls),
            "read": q(all_reads), "read_tmpl": q(reads["t"]), "read_own": q(reads["o"]),
            "read_mixed": q(reads["m"]), "write": q(writes),
            "read_cdf": cdf_points(all_reads), "write_cdf": cdf_points(writes),
            "reads": sum(r.reads for r in recs), "writes": sum(r.writes for r in recs),
            "read_bytes": sum(r.read_bytes for r in recs),
            "write_bytes": sum(r.write_bytes for r in recs),
            "verified_bytes": sum(r.verified_bytes for r in recs),
            "verify_failures": sum(r.verify_failures for r in recs),
            "io_errors": sum(r.io_errors for r in recs),
            "missing": sum(r.missing for r in recs),
            "problems": [f"desktop {r.index} ({r.disk}): {r.first_problem}"
                         for r in recs if r.first_problem][:5],
            "agent_read_latency": agent_hist,
            "datastore_latency": hist_delta(m0, m1, "goldcache_datastore_read_latency_seconds"),
            "filer_read_bytes": delta(m0.value("goldcache_datastore_read_bytes_total"),
                                      m1.value("goldcache_datastore_read_bytes_total")),
            "filer_read_ops": delta(m0.value("goldcache_datastore_read_ops_total"),
                                    m1.value("goldcache_datastore_read_ops_total")),
            "filer_write_bytes": delta(m0.value("goldcache_datastore_write_bytes_total"),
                                       m1.value("goldcache_datastore_write_bytes_total")),
            "ganesha_rchar": delta(c0["ganesha_rchar"], c1["ganesha_rchar"]),
            "overlay_ram": m1.value("goldcache_overlay_bytes", tier="ram"),
            "overlay_disk": m1.value("goldcache_overlay_bytes", tier="disk"),
            "spilled": delta(m0.value("goldcache_overlay_spilled_bytes_total"),
                             m1.value("goldcache_overlay_spilled_bytes_total")),
            "enospc": delta(m0.value("goldcache_overlay_enospc_total"),
                            m1.value("goldcache_overlay_enospc_total")),
            # What the miss path did (results.json only): a full write-behind
            # queue serves a chunk uncached, so another desktop refetches it.
            "miss_path": {name: delta(m0.value(f"goldcache_cache_{name}_total"),
                                      m1.value(f"goldcache_cache_{name}_total"))
                          for name in ("write_behind_full", "readahead_chunks", "readahead_late",
                                       "uncached_fills", "single_flight_waits", "prefetch_bytes",
                                       "prefetch_in_time", "prefetch_late")},
            "reused_manifest_bytes": delta(
                m0.value("goldcache_cache_reused_bytes_total", by="manifest"),
                m1.value("goldcache_cache_reused_bytes_total", by="manifest")),
            "agent_cpu": delta(c0["agent_cpu"], c1["agent_cpu"]),
            "ganesha_cpu": delta(c0["ganesha_cpu"], c1["ganesha_cpu"]),
            "proxy_cpu": delta(c0["proxy_cpu"], c1["proxy_cpu"]),
            "client_cpu": sum(r.cpu for r in recs),
            "harness_cpu": c1["self_cpu"] - c0["self_cpu"],
            "host_busy": busy,
            "host_busy_share": busy / max(1e-9, (c1["host"][1] - c0["host"][1])),
            "load": [c0["load"], c1["load"]],
            "agent_rss_kib": proc_status_kib(self.agent.pid, "VmRSS"),
        }
        known = sum(v or 0 for v in (res["agent_cpu"], res["ganesha_cpu"], res["proxy_cpu"]))
        res["other_cpu"] = busy - known - res["client_cpu"] - res["harness_cpu"]
        # The phase's CPU work (agent, desktops, filer, proxy) spread over every
        # CPU: no phase on this host can take less wall time than that.
        res["cpu_floor"] = (known + res["client_cpu"]) / NCPU
        for r in recs:
            d = self.desktops.setdefault(r.index, {"disk": r.disk, "verified_bytes": 0,
                                                   "read_bytes": 0, "verify_failures": 0,
                                                   "io_errors": 0, "missing": 0, "boot_s": []})
            for k in ("verified_bytes", "read_bytes", "verify_failures", "io_errors", "missing"):
                d[k] += getattr(r, k)
            if phase.boot:
                d["boot_s"].append(r.wall)
        return res

    def execute(self, phases: list[wl.Phase]) -> dict:
        say(f"N={self.n} {self.mode}: starting goldcached "
            f"({' '.join(self.agent_args()) or 'defaults'})")
        snap0 = self.rig.datastore_snapshot()
        m_start = None
        t0 = time.monotonic()
        self.start_agent()
        try:
            m_start, c_start = self.scrape(), self.counters()
            self.open_disks()
            for pi, ph in enumerate(phases):
                res = self.run_phase(pi, ph)
                self.phases.append(res)
                say(f"N={self.n} {self.mode} {ph.name}: {res['wall']:.1f} s, "
                    f"{res['reads']} reads p99 {ms(res['read']['p99'])} ms, "
                    f"{res['writes']} writes p99 {ms(res['write']['p99'])} ms, filer "
                    f"{mib(res['filer_read_bytes'])} MiB, verify failures "
                    f"{res['verify_failures']}, io errors {res['io_errors']}, load "
                    f"{res['load'][1]:.1f}")
            self.close_disks()
            m_end, c_end = self.scrape(), self.counters()
            hwm = proc_status_kib(self.agent.pid, "VmHWM")
        finally:
            for fd in self.holders:
                os.close(fd)
            self.holders = []
            rc = self.agent.stop(timeout=60) if self.agent.running() else self.agent.proc.returncode
        wall = time.monotonic() - t0
        snap1 = self.rig.datastore_snapshot()
        changed = sorted(k for k in set(snap0) | set(snap1) if snap0.get(k) != snap1.get(k))
        writes = {k: delta(m_start.value(name, **lab), m_end.value(name, **lab))
                  for k, name, lab in (
                      ("bytes", "goldcache_datastore_write_bytes_total", {}),
                      ("ops", "goldcache_datastore_write_ops_total", {}),
                      ("metadata", "goldcache_datastore_metadata_ops_total", {"access": "write"}))}
        used = m_end.value("goldcache_cache_used_bytes") or 0
        chunks = used / CHUNK
        ram_tiers = min(self.cfg.overlay_ram * self.n, self.cfg.overlay_ram_host)
        self.summary = {
            "n": self.n, "mode": self.mode, "wall": wall, "agent_rc": rc,
            "filer_read_bytes": delta(m_start.value("goldcache_datastore_read_bytes_total"),
                                      m_end.value("goldcache_datastore_read_bytes_total")),
            "filer_read_ops": delta(m_start.value("goldcache_datastore_read_ops_total"),
                                    m_end.value("goldcache_datastore_read_ops_total")),
            "filer_writes": writes,
            "ganesha_rchar": delta(c_start["ganesha_rchar"], c_end["ganesha_rchar"]),
            "ganesha_write_bytes": delta(c_start["ganesha_write_bytes"],
                                         c_end["ganesha_write_bytes"]),
            "datastore_changed": changed,
            "agent_cpu": delta(c_start["agent_cpu"], c_end["agent_cpu"]),
            "ganesha_cpu": delta(c_start["ganesha_cpu"], c_end["ganesha_cpu"]),
            "proxy_cpu": delta(c_start["proxy_cpu"], c_end["proxy_cpu"]),
            "client_cpu": sum(p["client_cpu"] for p in self.phases),
            "agent_hwm_kib": hwm,
            "cache_used_bytes": used,
            "cached_chunks": chunks,
            "rss_bound_kib": (ram_tiers + 100 * MiB + 64 * chunks) / KiB,
            "ram_tiers": ram_tiers,
            "cache_hits": delta(m_start.value("goldcache_cache_hits_total"),
                                m_end.value("goldcache_cache_hits_total")),
            "cache_misses": delta(m_start.value("goldcache_cache_misses_total"),
                                  m_end.value("goldcache_cache_misses_total")),
            "single_flight_waits": delta(
                m_start.value("goldcache_cache_single_flight_waits_total"),
                m_end.value("goldcache_cache_single_flight_waits_total")),
            "errors": delta(m_start.value("goldcache_errors_total"),
                            m_end.value("goldcache_errors_total")),
            "verify_failures": sum(p["verify_failures"] for p in self.phases),
            "io_errors": sum(p["io_errors"] + p["missing"] for p in self.phases),
            "desktops": {str(k): v for k, v in sorted(self.desktops.items())},
        }
        return {"summary": self.summary, "phases": self.phases}


# ---------------------------------------------------------------------------
# Patch day

PATCH_RUNS = (
    # (label, generation, phase, what it stands for)
    ("patch", 1, "reboot",
     "the template patched, not published: every desktop reboots on the new generation"),
    ("patch+manifest", 2, "reboot",
     "patched again and published (goldcache publish on the host that recorded the trace): "
     "every desktop reboots"),
    ("cold+manifest", 2, "boot",
     "a new host (empty cache) boots the published generation: its manifest's trace is "
     "prefetched"),
)


def patch_day(rig: Rig, cfg, n: int, cache_dir: str, flags: set[str], n_raw: int) -> list[dict]:
    """After the off/cold/warm runs of N: the runs of PATCH_RUNS, on the cache
    the warm run left (the last one on a fresh cache), then the template
    restored to generation 0 for the next N."""
    out = []
    cold_dir = cache_dir + "-cold-manifest"
    try:
        for label, gen, phase, _ in PATCH_RUNS:
            published = None
            if label != "cold+manifest":
                work = wl.Workload(cfg.template_size, cfg.seed, cfg.boot_fraction,
                                   generation=gen, changed_fraction=cfg.patch_fraction)
                say(f"N={n} {label}: writing generation {gen} of the template "
                    f"({cfg.patch_fraction:.0%} of its chunks changed per generation)")
                rig.write_generation(work.template, n_raw)
            if label == "patch+manifest":
                published = rig.publish(cache_dir, n_raw)
                say(f"N={n} {label}: published " + ", ".join(
                    f"{p['path'].rsplit('/', 1)[-1]} ({p['chunks']} chunks, trace of "
                    f"{p['trace_chunks']})" for p in published))
            streams = generate_streams(n, cfg, os.path.join(rig.ws.root, f"streams-g{gen}-{phase}"),
                                       [phase], gen)
            run = Run(rig, cfg, n, label, streams, cold_dir if label == "cold+manifest"
                      else cache_dir, flags)
            res = run.execute(wl.make_phases([phase], cfg.steady_seconds, cfg.steady_iops))
            res["config"] = {"raw_clones": cfg.raw_clones if n >= 2 else 0, "generation": gen,
                             "published": published}
            out.append(res)
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
        rig.remove_manifests(n_raw)
        rig.write_generation(wl.Workload(cfg.template_size, cfg.seed,
                                         cfg.boot_fraction).template, n_raw)
    return out


def patch_table(results, patch_results) -> list[list[str]]:
    rows = []
    for n in sorted({r["summary"]["n"] for r in patch_results}):
        base = find(results, n, "cold", "boot")
        base_bytes = base["filer_read_bytes"] if base else None
        warm = find(results, n, "warm", "reboot")
        cands = [("cold", "boot", base, "a new host, no manifest, no trace (the storm's cold boot)"),
                 ("warm", "reboot", warm, "nothing changed (the storm's warm reboot)")]
        for label, _, phase, what in PATCH_RUNS:
            r = next((x for x in patch_results if x["summary"]["n"] == n
                      and x["summary"]["mode"] == label), None)
            p = r["phases"][0] if r else None
            cands.append((label, phase, p, what))
        for label, phase, p, what in cands:
            if not p:
                continue
            dw = p["desktop_wall"]
            mp = p.get("miss_path", {})
            fb = p["filer_read_bytes"]
            rows.append([
                n, label, phase, what, f"{secs(dw['p50'])} / {secs(dw['p99'])}",
                f"{ms(p['read']['p99'])}", mib(fb),
                "-" if fb is None or not base_bytes else f"{fb / base_bytes:.2f}",
                mib(p.get("reused_manifest_bytes")),
                f"{mib(mp.get('prefetch_bytes'))} / {num(mp.get('prefetch_in_time'))} / "
                f"{num(mp.get('prefetch_late'))}",
                f"{p['verify_failures']} / {p['io_errors'] + p['missing']}",
            ])
    return rows


PATCH_COLUMNS = ["N", "run", "phase", "what", "boot p50 / p99 (s)", "read p99 (ms)",
                 "filer read MiB", "filer / cold boot", "reused by manifest MiB",
                 "prefetched MiB / in time / late", "verify fail / IO err"]


def cdf_points(sorted_vals, points: int = 200) -> list[list[float]]:
    """(latency, fraction at or below) at log-spaced ranks, for the plot."""
    n = len(sorted_vals)
    if n == 0:
        return []
    out, seen = [], set()
    for j in range(points + 1):
        frac = 1 - 10 ** (-4 * j / points)  # 0 .. 0.9999, dense in the tail
        idx = min(n - 1, int(frac * n))
        if idx not in seen:
            seen.add(idx)
            out.append([sorted_vals[idx], (idx + 1) / n])
    if n - 1 not in seen:
        out.append([sorted_vals[-1], 1.0])
    return out


# ---------------------------------------------------------------------------
# Formatting


def ms(v) -> str:
    if v is None:
        return "-"
    v *= 1000
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def secs(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def mib(v) -> str:
    if v is None:
        return "-"
    v /= MiB
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def num(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


PHASE_COLUMNS = [
    "N", "mode", "phase", "wall s", "desktop s p50 / p99", "reads",
    "read ms p50 / p99 / p99.9", "read p99 ms tmpl / own", "writes", "write ms p50 / p99",
    "agent read ms p50 / p99 by source", "filer read MiB / ops", "ganesha rchar MiB",
    "cold ideal MiB tmpl + raw + clones", "filer write B", "overlay MiB ram / disk", "spilled MiB",
    "agent CPU s", "qemu-io CPU s", "CPU floor s", "host busy %", "verify fail / io err",
]

RUN_COLUMNS = [
    "N", "mode", "wall s", "filer read MiB / ops", "ganesha rchar MiB", "filer write B / ops",
    "datastore files changed", "agent CPU s", "agent peak RSS MiB", "RSS bound MiB",
    "cached MiB", "hits / misses / single-flight waits", "ganesha CPU s", "proxy CPU s",
    "qemu-io CPU s", "verified MiB / failures",
]


def phase_row(n, mode, p) -> list[str]:
    agent = " · ".join(f"{src} {ms(h.get('p50'))} / {ms(h.get('p99'))}"
                       for src, h in sorted(p["agent_read_latency"].items()) if h.get("count"))
    dw = p["desktop_wall"]
    fw = p["filer_write_bytes"]
    return [
        n, mode, p["phase"], secs(p["wall"]), f"{secs(dw['p50'])} / {secs(dw['p99'])}",
        p["reads"],
        f"{ms(p['read']['p50'])} / {ms(p['read']['p99'])} / {ms(p['read']['p999'])}",
        f"{ms(p['read_tmpl']['p99'])} / {ms(p['read_own']['p99'])}", p["writes"],
        f"{ms(p['write']['p50'])} / {ms(p['write']['p99'])}", agent or "-",
        f"{mib(p['filer_read_bytes'])} / {num(p['filer_read_ops'])}", mib(p["ganesha_rchar"]),
        ("-" if not p.get("ideal_filer") else
         f"{mib(p['ideal_filer']['template'])} + {mib(p['ideal_filer']['raw'])} + "
         f"{mib(p['ideal_filer']['clones'])}"),
        ("-" if fw is None else f"{fw:.0f}" if fw == 0 else f"**{fw:.0f} (NOT ZERO)**"),
        f"{mib(p['overlay_ram'])} / {mib(p['overlay_disk'])}", mib(p["spilled"]),
        secs(p["agent_cpu"]), secs(p["client_cpu"]), secs(p["cpu_floor"]),
        f"{100 * p['host_busy_share']:.0f}",
        f"{p['verify_failures']} / {p['io_errors'] + p['missing']}",
    ]


def run_row(s) -> list[str]:
    fw = s["filer_writes"]
    wtxt = f"{num(fw['bytes'])} / {num(fw['ops'])}"
    if any(v for v in fw.values()):
        wtxt = f"**{wtxt} (NOT ZERO)**"
    changed = len(s["datastore_changed"])
    verified = sum(d["verified_bytes"] for d in s["desktops"].values())
    return [
        s["n"], s["mode"], secs(s["wall"]),
        f"{mib(s['filer_read_bytes'])} / {num(s['filer_read_ops'])}", mib(s["ganesha_rchar"]),
        wtxt, str(changed) if not changed else f"**{changed}**",
        secs(s["agent_cpu"]),
        "-" if s["agent_hwm_kib"] is None else f"{s['agent_hwm_kib'] / 1024:.0f}",
        f"{s['rss_bound_kib'] / 1024:.0f}", mib(s["cache_used_bytes"]),
        f"{num(s['cache_hits'])} / {num(s['cache_misses'])} / {num(s['single_flight_waits'])}",
        secs(s["ganesha_cpu"]), secs(s["proxy_cpu"]), secs(s["client_cpu"]),
        f"{verified / MiB:.0f} / {s['verify_failures']}",
    ]


def find(results, n, mode, phase=None):
    for r in results:
        if r["summary"]["n"] == n and r["summary"]["mode"] == mode:
            if phase is None:
                return r
            for p in r["phases"]:
                if p["phase"] == phase:
                    return p
    return None


def targets(results, ns) -> list[list[str]]:
    """The lead's targets (issue 8), from this run's numbers."""
    rows = []
    lo, hi = min(ns), max(ns)

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    def add(what, measured, ok):
        rows.append([what, measured, verdict(ok)])

    cold_hi, off_lo = find(results, hi, "cold", "boot"), find(results, lo, "off", "boot")
    if cold_hi and off_lo and lo == 1:
        a, b = cold_hi["desktop_wall"]["p99"], off_lo["desktop_wall"]["p99"]
        add(f"cold N={hi} boot p99 <= caching-off N=1 boot",
            f"{secs(a)} s vs {secs(b)} s ({a / b:.2f}x)", a <= b)
    c_hi, c_lo = find(results, hi, "cold", "boot"), find(results, lo, "cold", "boot")
    if c_hi and c_lo and lo == 1 and c_lo["filer_read_bytes"]:
        a, b = c_hi["filer_read_bytes"], c_lo["filer_read_bytes"]
        # Each desktop's own files are fetched besides the template's chunks, by
        # design: the qcow2 clone file (its header and tables) and a raw clone's
        # blocks. The target is about the shared template: compare its share.
        ia, ib = c_hi.get("ideal_filer") or {}, c_lo.get("ideal_filer") or {}
        own_a = ia.get("raw", 0) + ia.get("clones", 0)
        own_b = ib.get("raw", 0) + ib.get("clones", 0)
        ta, tb = a - own_a, b - own_b
        add(f"filer read bytes, cold N={hi} boot <= 1.1 x cold N=1 boot (the template's share)",
            f"{mib(a)} MiB less the desktops' own files {mib(own_a)} MiB (raw clone "
            f"{mib(ia.get('raw', 0))}, qcow2 clone files {mib(ia.get('clones', 0))}) = {mib(ta)} "
            f"vs {mib(b)} less {mib(own_b)} = {mib(tb)} MiB: {ta / tb:.2f}x "
            f"({a / b:.2f}x all bytes)", ta <= 1.1 * tb)
    w_hi, w_lo = find(results, hi, "warm", "boot"), find(results, lo, "warm", "boot")
    if w_hi and w_lo and lo == 1:
        a, b = w_hi["read"]["p99"], w_lo["read"]["p99"]
        if a and b:
            add(f"warm N={hi} boot read p99 <= 2 x warm N=1", f"{ms(a)} vs {ms(b)} ms "
                f"({a / b:.2f}x)", a <= 2 * b)
    s_hi, s_lo = find(results, hi, "warm", "steady"), find(results, lo, "warm", "steady")
    if s_hi and s_lo and lo == 1:
        a, b = s_hi["write"]["p99"], s_lo["write"]["p99"]
        if a and b:
            spill, disk = s_hi["spilled"] or 0, s_hi["overlay_disk"] or 0
            cond = (f"others spilled {mib(spill)} MiB in the phase, disk tier "
                    f"{mib(disk)} MiB" if spill else
                    "**nothing spilled in the phase: the condition was not met**")
            add(f"warm steady write p99, N={hi} <= 1.5 x N=1 ({cond})",
                f"{ms(a)} vs {ms(b)} ms ({a / b:.2f}x)", a <= 1.5 * b)
    worst = None
    for r in results:
        s = r["summary"]
        if s["agent_hwm_kib"] is None:
            continue
        ratio = s["agent_hwm_kib"] / s["rss_bound_kib"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, s)
    if worst:
        s = worst[1]
        add("agent peak RSS <= RAM tiers + 100 MiB + 64 B per cached chunk (worst run)",
            f"N={s['n']} {s['mode']}: {s['agent_hwm_kib'] / 1024:.0f} MiB vs "
            f"{s['rss_bound_kib'] / 1024:.0f} MiB ({s['ram_tiers'] // MiB} MiB tiers)",
            worst[0] <= 1.0)
    return rows


def report(cfg, results, env) -> str:
    lines = []
    lines.append(f"# goldcache storm, {env['date']}")
    lines.append("")
    lines.append(f"`{env['command']}`")
    lines.append("")
    lines.append(
        f"Template {fmt_size(cfg.template_size)} (boot set {env['boot_mib']:.0f} MiB, "
        f"{cfg.boot_fraction:.0%}), seed {cfg.seed}, N = {', '.join(map(str, cfg.n))}, "
        f"phases {', '.join(cfg.phases)}, modes {', '.join(cfg.modes)}; NFSv3 from nfs-ganesha "
        f"on loopback, +{cfg.delay_us:g} us per RPC (delay proxy); overlay RAM "
        f"{fmt_size(cfg.overlay_ram)} per desktop, {fmt_size(cfg.overlay_ram_host)} per host; "
        f"cache {fmt_size(cfg.cache_size)}; {cfg.raw_clones} raw clone(s) for N >= 2. "
        f"{NCPU} CPUs; load average {env['load_start']:.1f} at the start, "
        f"{env['load_end']:.1f} at the end; host CPU busy {env['busy_share']:.0%} over the run. "
        f"Floors: qemu-io start-up {ms(env['qemu_io_start_s'])} ms; "
        f"goldcached {env['binary']}.")
    lines.append("")
    lines.append("## Per phase")
    lines.append("")
    rows = [phase_row(r["summary"]["n"], r["summary"]["mode"], p)
            for r in results for p in r["phases"]]
    lines.append(md_table(PHASE_COLUMNS, rows))
    lines.append("")
    lines.append("## Per run")
    lines.append("")
    lines.append(md_table(RUN_COLUMNS, [run_row(r["summary"]) for r in results]))
    lines.append("")
    lines.append("## Targets")
    lines.append("")
    lines.append(md_table(["target", "measured", "verdict"], targets(results, cfg.n)))
    lines.append("")
    notes = harness_notes(cfg, results, env)
    if notes:
        lines.append("## Where the harness, not the agent, sets the pace")
        lines.append("")
        lines += [f"- {n}" for n in notes]
        lines.append("")
    patch = env.get("patch_results") or []
    if patch:
        lines.append("## Patch day")
        lines.append("")
        lines.append(
            f"After the runs of each N, on the cache the warm run left: the template is "
            f"patched ({cfg.patch_fraction:.0%} of its chunks rewritten per generation, the raw "
            f"clone recomposed from it) and every desktop reboots, first unpublished, then "
            f"patched again and published; then a new host boots the published generation. "
            f"Filer bytes are the measured host's (publishing, on another agent, reads the "
            f"whole file once, farm-wide).")
        lines.append("")
        lines.append(md_table(PATCH_COLUMNS, patch_table(results, patch)))
        lines.append("")
    bad = loud_problems(results + patch)
    if env.get("fatal"):
        bad.append(f"the run stopped early: {env['fatal']}")
    if bad:
        lines.append("## PROBLEMS")
        lines.append("")
        lines += [f"- **{b}**" for b in bad]
        lines.append("")
    return "\n".join(lines)


def harness_notes(cfg, results, env) -> list[str]:
    notes = []
    for r in results:
        tag = f"N={r['summary']['n']} {r['summary']['mode']}"
        for p in r["phases"]:
            if p["wall"] > 0 and p["proxy_cpu"] and p["proxy_cpu"] / p["wall"] > 0.8:
                notes.append(f"{tag} {p['phase']}: the delay proxy (one Python process) used "
                             f"{p['proxy_cpu'] / p['wall']:.0%} of a CPU: the filer path is "
                             "bounded by it")
            if p["wall"] > 0 and p["client_cpu"] / (p["wall"] * NCPU) > 0.5:
                notes.append(f"{tag} {p['phase']}: the qemu-io desktops used "
                             f"{p['client_cpu'] / (p['wall'] * NCPU):.0%} of the host's CPU")
        busy = [p for p in r["phases"] if p["host_busy_share"] > 0.9]
        if busy:
            cpu = {k: sum((p[k] or 0) for p in busy) for k in
                   ("agent_cpu", "client_cpu", "ganesha_cpu", "proxy_cpu", "harness_cpu",
                    "other_cpu")}
            total = sum(p["wall"] for p in busy) * NCPU
            notes.append(
                f"{tag}: CPU-bound (host > 90% busy) in {', '.join(p['phase'] for p in busy)}; "
                f"of their {total:.0f} CPU-s: agent {cpu['agent_cpu']:.1f}, qemu-io "
                f"{cpu['client_cpu']:.1f}, ganesha {cpu['ganesha_cpu']:.1f}, proxy "
                f"{cpu['proxy_cpu']:.1f}, harness {cpu['harness_cpu']:.1f}, everything else on "
                f"the host (other users, kernel threads) {cpu['other_cpu']:.1f}: latencies "
                "there include waiting for a CPU")
    return notes


def loud_problems(results) -> list[str]:
    bad = []
    for r in results:
        s = r["summary"]
        tag = f"N={s['n']} {s['mode']}"
        if any(v for v in s["filer_writes"].values()):
            bad.append(f"{tag}: THE AGENT WROTE TO THE DATASTORE: {s['filer_writes']}")
        if s["datastore_changed"]:
            bad.append(f"{tag}: DATASTORE FILES CHANGED: {s['datastore_changed'][:5]}")
        if s["verify_failures"]:
            bad.append(f"{tag}: {s['verify_failures']} reads returned wrong bytes")
        if s["io_errors"]:
            bad.append(f"{tag}: {s['io_errors']} IOs failed or were not run")
        if s["agent_rc"] not in (0, None):
            bad.append(f"{tag}: goldcached exited {s['agent_rc']}")
        for p in r["phases"]:
            for prob in p["problems"]:
                bad.append(f"{tag} {p['phase']}: {prob}")
    return bad


# ---------------------------------------------------------------------------
# The plot


def ensure_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("python3-matplotlib is missing; installing it (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "python3-matplotlib"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "python3-matplotlib"], env=env, capture_output=True)
    try:
        import matplotlib  # noqa: F401,F811
        return True
    except ImportError:
        return False


def plot(cfg, results, path: str) -> bool:
    if not ensure_matplotlib():
        say("no matplotlib: no plot (apt-get install python3-matplotlib)")
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"off": "tab:red", "cold": "tab:blue", "warm": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ns = sorted(cfg.n)

    ax = axes[0][0]
    for mode in cfg.modes:
        for phase, style in (("boot", "-"), ("reboot", ":")):
            pts = [(n, find(results, n, mode, phase)) for n in ns]
            pts = [(n, p) for n, p in pts if p]
            if not pts:
                continue
            ax.plot([n for n, _ in pts], [p["desktop_wall"]["p99"] for _, p in pts], style,
                    marker="o", color=colors[mode], label=f"{mode} {phase} p99")
            ax.plot([n for n, _ in pts], [p["desktop_wall"]["p50"] for _, p in pts], style,
                    marker=".", alpha=0.5, color=colors[mode])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("desktops (N)")
    ax.set_ylabel("boot time per desktop, s (p99; faint: p50)")
    ax.set_title("Boot time")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)

    ax = axes[0][1]
    for mode in cfg.modes:
        for phase, marker in (("boot", "o"), ("steady", "s"), ("sweep", "^"), ("reboot", "x")):
            pts = [(n, find(results, n, mode, phase)) for n in ns]
            pts = [(n, p) for n, p in pts if p and p["read"]["p99"]]
            if pts:
                ax.plot([n for n, _ in pts], [1000 * p["read"]["p99"] for _, p in pts],
                        marker=marker, color=colors[mode], label=f"{mode} {phase}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("desktops (N)")
    ax.set_ylabel("read latency p99, ms (qemu-io, per op)")
    ax.set_title("Read p99 by phase")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, alpha=0.3)

    ax = axes[1][0]
    width = 0.8 / max(1, len(cfg.modes))
    for j, mode in enumerate(cfg.modes):
        vals = []
        for n in ns:
            r = find(results, n, mode)
            vals.append((r["summary"]["filer_read_bytes"] or 0) / MiB if r else 0)
        xs = [i + j * width for i in range(len(ns))]
        ax.bar(xs, vals, width, color=colors[mode], label=mode)
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.0f}", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([i + width * (len(cfg.modes) - 1) / 2 for i in range(len(ns))])
    ax.set_xticklabels([f"N={n}" for n in ns])
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("filer read MiB, whole run (agent's count)")
    ax.set_title("What the filer served")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[1][1]
    hi = max(ns)
    for mode in cfg.modes:
        p = find(results, hi, mode, "boot")
        if p and p["read_cdf"]:
            xs = [1000 * x for x, _ in p["read_cdf"]]
            ys = [1 - y + 1e-6 for _, y in p["read_cdf"]]
            ax.plot(xs, ys, color=colors[mode], label=f"{mode} boot reads")
        p = find(results, hi, mode, "steady")
        if p and p["write_cdf"]:
            xs = [1000 * x for x, _ in p["write_cdf"]]
            ys = [1 - y + 1e-6 for _, y in p["write_cdf"]]
            ax.plot(xs, ys, "--", color=colors[mode], label=f"{mode} steady writes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("fraction of ops slower")
    ax.set_title(f"Latency tail at N={hi}")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)

    fig.suptitle(f"goldcache storm: {fmt_size(cfg.template_size)} template, "
                 f"+{cfg.delay_us:g} us per NFS RPC, seed {cfg.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# Main


def qemu_io_startup(workdir: str, aio: str) -> Optional[float]:
    """Median wall time of qemu-io opening a tiny local qcow2 and quitting: the
    part of every boot time that is the client starting, not the agent."""
    img = os.path.join(workdir, "startup.qcow2")
    gcrig.run_tool(["qemu-img", "create", "-q", "-f", "qcow2", img, "64M"])
    times = []
    for _ in range(5):
        t = time.monotonic()
        subprocess.run(["qemu-io", "-f", "qcow2", "-t", "none", "-i", aio, "-c", "read 0 4k",
                        img],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t)
    os.unlink(img)
    return sorted(times)[len(times) // 2]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/storm", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", "--smoke", action="store_true",
                   help="tiny scale (64 MiB template, N=2, 2 s steady): a smoke test, under a "
                        "minute")
    p.add_argument("--template-size", type=parse_size, help="template size (default 1GiB; "
                   "quick: 64MiB)")
    p.add_argument("--boot-fraction", type=float, help="share of the template a boot reads "
                   "(default 0.15; quick: 0.2)")
    p.add_argument("--n", help="comma list of desktop counts (default 1,8,32; quick: 2)")
    p.add_argument("--phases", default=",".join(wl.PHASE_ORDER),
                   help=f"comma list, in order (default {','.join(wl.PHASE_ORDER)})")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma list of off,cold,warm (warm needs cold before it)")
    p.add_argument("--delay-us", type=float, default=500.0,
                   help="added to every NFS RPC by bench/delayproxy.py (default 500; 0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steady-seconds", type=float, help="default 20; quick: 2")
    p.add_argument("--steady-iops", type=float, default=20.0, help="per desktop (default 20)")
    p.add_argument("--overlay-ram", type=parse_size, default=32 * MiB,
                   help="goldcached --overlay-ram (default 32MiB)")
    p.add_argument("--overlay-ram-host", type=parse_size, default=512 * MiB,
                   help="goldcached --overlay-ram-host (default 512MiB)")
    p.add_argument("--cache-size", type=parse_size,
                   help="goldcached --cache-size (default 3 x template + 4GiB)")
    p.add_argument("--raw-clones", type=int, default=1,
                   help="desktops on a raw full clone instead of a qcow2 linked clone, for "
                        "N >= 2 (default 1)")
    p.add_argument("--aio", default="native", choices=("threads", "native", "io_uring"),
                   help="qemu-io's AIO mode (default native: libaio, as libvirt's io='native' "
                        "with cache=none; it costs the client the least CPU per op)")
    p.add_argument("--agent-arg", action="append", default=[], dest="agent_args",
                   help="one more goldcached argument (repeatable)")
    p.add_argument("--out", help="output directory (default /var/tmp/goldcache-storm.DATE)")
    p.add_argument("--workdir", default=os.environ.get("GOLDCACHE_BENCH_DIR", "/var/tmp"),
                   help="where the datastore and caches live (default $GOLDCACHE_BENCH_DIR "
                        "or /var/tmp)")
    p.add_argument("--phase-timeout", type=float, default=1800.0,
                   help="kill a phase's desktops after this many seconds (default 1800)")
    p.add_argument("--no-patch-day", dest="patch_day", action="store_false",
                   help="skip patch day (after each N: the template patched and rebooted on, "
                        "unpublished and published, and a new host booting the published one)")
    p.add_argument("--patch-fraction", type=float, default=0.03,
                   help="share of the template's chunks a patch rewrites (default 0.03)")
    p.add_argument("--keep", action="store_true", help="keep the workspace")
    p.add_argument("--keep-raw", action="store_true", help="keep qemu-io's outputs in OUT/raw")
    cfg = p.parse_args(argv)
    q = cfg.quick
    cfg.template_size = cfg.template_size or (64 * MiB if q else GiB)
    cfg.boot_fraction = cfg.boot_fraction if cfg.boot_fraction is not None else (0.2 if q else 0.15)
    cfg.n = [int(x) for x in (cfg.n or ("2" if q else "1,8,32")).split(",")]
    cfg.phases = [x for x in cfg.phases.split(",") if x]
    cfg.modes = [x for x in cfg.modes.split(",") if x]
    cfg.steady_seconds = cfg.steady_seconds if cfg.steady_seconds is not None else (2 if q else 20)
    cfg.cache_size = cfg.cache_size or (3 * cfg.template_size + 4 * GiB)
    if cfg.template_size % wl.WINDOW:
        p.error(f"--template-size must be a multiple of {wl.WINDOW // KiB} KiB")
    if any(m not in MODES for m in cfg.modes):
        p.error(f"--modes: choose from {','.join(MODES)}")
    if "warm" in cfg.modes and "cold" not in cfg.modes:
        p.error("--modes: warm uses the cache that cold filled; give cold too")
    if cfg.patch_day and "cold" not in cfg.modes:
        cfg.patch_day = False  # it patches the cache the cold (and warm) runs filled
    if not 0 < cfg.patch_fraction < 1:
        p.error("--patch-fraction: between 0 and 1")
    if min(cfg.n) < 1:
        p.error("--n: at least one desktop")
    try:
        wl.make_phases(cfg.phases, 1, 1)
    except ValueError as e:
        p.error(str(e))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg.out = os.path.abspath(cfg.out or os.path.join("/var/tmp", f"goldcache-storm.{stamp}"))
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    binary = gcrig.default_binary()
    for tool in ("qemu-io", "qemu-img", "nfs-ls"):
        if not shutil.which(tool):
            sys.exit(f"storm: {tool} not installed (run ./scripts/setup.sh)")
    if not os.access(binary, os.X_OK):
        sys.exit(f"storm: {binary} not built (run ./scripts/setup.sh or set GOLDCACHE_BIN)")
    if not nfsrig.ganesha_available():
        sys.exit("storm: ganesha.nfsd not installed (run ./scripts/setup.sh)")
    os.makedirs(cfg.out, exist_ok=True)
    flags = agent_flags(binary)
    phases = wl.make_phases(cfg.phases, cfg.steady_seconds, cfg.steady_iops)
    work = wl.Workload(cfg.template_size, cfg.seed, cfg.boot_fraction)
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join(["./bench/storm"] + (sys.argv[1:] if argv is None else argv)),
           "binary": binary, "boot_mib": work.boot_set.bytes / MiB, "load_start": loadavg(),
           "phase_descriptions": {ph.name: ph.describe(work) for ph in phases}}
    env["patch_results"] = []
    busy0 = host_cpu()
    t0 = time.monotonic()
    rig = Rig(cfg)
    results = []
    interrupted = False
    try:
        rig.start()
        env["qemu_io_start_s"] = qemu_io_startup(rig.ws.root, cfg.aio)
        max_n = max(cfg.n)
        n_raw = min(cfg.raw_clones, max_n - 1) if max_n >= 2 else 0
        rig.provision(work.template, max_n, n_raw)
        say(f"generating the streams of {max_n} desktops (seed {cfg.seed})")
        streams = generate_streams(max_n, cfg, os.path.join(rig.ws.root, "streams"))
        rig.start_nfs()
        for n in cfg.n:
            cache_dir = os.path.join(rig.ws.root, f"cache-n{n}")
            for mode in cfg.modes:
                cdir = os.path.join(rig.ws.root, f"cache-n{n}-off") if mode == "off" else cache_dir
                run = Run(rig, cfg, n, mode, streams, cdir, flags)
                res = run.execute(phases)
                res["config"] = {"raw_clones": cfg.raw_clones if n >= 2 else 0}
                results.append(res)
                if mode == "off":
                    shutil.rmtree(cdir, ignore_errors=True)
            if cfg.patch_day:
                env["patch_results"] += patch_day(rig, cfg, n, cache_dir, flags, n_raw)
            shutil.rmtree(cache_dir, ignore_errors=True)  # the next N starts cold again
    except KeyboardInterrupt:
        say("interrupted")
        interrupted = True
    except Exception as e:  # report what completed, and what broke
        import traceback
        traceback.print_exc()
        env["fatal"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        for a in (rig.ws.agents if rig.ws else []):
            if a.log_path:
                say(a.log_tail(30))
    finally:
        rig.stop()
    busy1 = host_cpu()
    env["load_end"] = loadavg()
    env["busy_share"] = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
    env["wall_s"] = time.monotonic() - t0
    if not results:
        say("no results" + (f": {env['fatal']}" if env.get("fatal") else ""))
        return 130 if interrupted else 1
    if "qemu_io_start_s" not in env:
        env["qemu_io_start_s"] = None
    text = report(cfg, results, env)
    if cfg.raw_clones and max(cfg.n) >= 2:
        text += ("\nNote: for N >= 2 one desktop runs on a raw full clone, a file of its own on "
                 "the filer, cached under its own identity: its cold boot costs the filer its "
                 "own boot set besides the template's.\n")
    with open(os.path.join(cfg.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    doc = {"config": {k: v for k, v in vars(cfg).items()}, "env": env, "results": results,
           "columns": {"phase": PHASE_COLUMNS, "run": RUN_COLUMNS}}
    with open(os.path.join(cfg.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str)
    plotted = plot(cfg, results, os.path.join(cfg.out, "storm.png"))
    print(text)
    say(f"{env['wall_s']:.0f} s; report {cfg.out}/report.md, results.json"
        + (", storm.png" if plotted else " (no plot)"))
    bad = loud_problems(results + env["patch_results"]) + ([env["fatal"]] if env.get("fatal") else [])
    if bad:
        for b in bad:
            say(f"PROBLEM: {b}")
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
