"""gcrig: start, watch and stop goldcached for tests, the demo and benchmarks.

A Workspace is a fresh directory /tmp/goldcache-test.XXXXXXXX holding a
datastore/, a cache/ and a mountpoint mnt/. An Agent is one goldcached process
over a workspace, started by PID; readiness is the systemd notify protocol (the
agent sends READY=1 to $NOTIFY_SOCKET once the mount is live and the stats
endpoint listens), never a sleep.

Cleanup only touches what this module started or made: the agent it spawned
(by PID), mounts under its own workspace, and its own workspace directory.
clear_stale() removes leftovers of earlier runs whose owning process is gone.

Command line (for shell scripts):
  gcrig.py wait-ready SOCKET [--timeout S]   bind SOCKET, wait for READY=1
  gcrig.py clear-stale                        unmount/remove dead workspaces
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from typing import Callable, Iterable, Optional

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

WORKSPACE_PREFIX = "goldcache-test."
WORKSPACE_BASE = "/tmp"
OWNER_FILE = "owner.pid"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_binary() -> str:
    """$GOLDCACHE_BIN, else build/agent/goldcached in this checkout."""
    return os.environ.get("GOLDCACHE_BIN") or os.path.join(_REPO, "build", "agent", "goldcached")


# ---------------------------------------------------------------------------
# Mounts and processes


def _unescape_mount_path(field: str) -> str:
    # /proc/*/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point visible to this process, in mount order."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(_unescape_mount_path(fields[4]))
    return points


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_points()


def mounts_under(root: str) -> list[str]:
    root = os.path.realpath(root)
    return [p for p in mount_points() if p == root or p.startswith(root + "/")]


def unmount(path: str) -> bool:
    """Lazily unmounts `path` (a FUSE mount, live or dead). True if it is gone."""
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return True
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return not is_mounted(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the process that started the
    # agent dies (a test killed by a timeout), the agent gets SIGTERM and
    # unmounts instead of lingering. A new session keeps Ctrl-C in a terminal
    # from reaching the agent directly: the owner stops it in order.
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------
# Workspaces


def clear_stale(base: str = WORKSPACE_BASE, log: Callable[[str], None] = lambda s: None) -> None:
    """Unmounts and removes workspaces left by runs whose owner process is gone.

    Only paths under BASE/goldcache-test.* are touched, and only when the pid in
    their owner.pid is dead (so concurrent runs do not disturb each other).
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in sorted(names):
        if not name.startswith(WORKSPACE_PREFIX):
            continue
        root = os.path.join(base, name)
        try:
            with open(os.path.join(root, OWNER_FILE), encoding="ascii") as f:
                owner = int(f.read().strip() or "0")
        except (OSError, ValueError):
            owner = 0
        if owner and pid_alive(owner):
            continue
        for mp in sorted(mounts_under(root), key=len, reverse=True):
            log(f"clearing stale mount {mp}")
            unmount(mp)
        if mounts_under(root):
            log(f"cannot unmount everything under {root}; leaving it")
            continue
        shutil.rmtree(root, ignore_errors=True)


class Workspace:
    """A temporary datastore/cache/mountpoint triple under /tmp/goldcache-test.*."""

    def __init__(self, base: str = WORKSPACE_BASE, keep: bool = False):
        self.root = tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=base)
        with open(os.path.join(self.root, OWNER_FILE), "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        self.datastore = os.path.join(self.root, "datastore")
        self.cache_dir = os.path.join(self.root, "cache")
        self.mountpoint = os.path.join(self.root, "mnt")
        for d in (self.datastore, self.cache_dir, self.mountpoint):
            os.mkdir(d)
        self.keep = keep
        self.agents: list[Agent] = []

    def ds(self, rel: str) -> str:
        return os.path.join(self.datastore, rel)

    def mnt(self, rel: str) -> str:
        return os.path.join(self.mountpoint, rel)

    def agent(self, **kwargs) -> "Agent":
        a = Agent(self, **kwargs)
        self.agents.append(a)
        return a

    def cleanup(self) -> list[str]:
        """Stops every agent, unmounts, removes the directory. Returns problems seen."""
        problems = []
        for a in self.agents:
            problems += a.terminate()
        for mp in sorted(mounts_under(self.root), key=len, reverse=True):
            problems.append(f"mount {mp} still present at cleanup; unmounting it")
            if not unmount(mp):
                problems.append(f"could not unmount {mp}")
        if mounts_under(self.root):
            problems.append(f"not removing {self.root}: mounts remain")
        elif not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------
# Metrics


_MISSING = object()


class Metrics:
    """Samples of one /metrics scrape.

    value(name, **labels) sums every sample called `name` whose labels include
    `labels` (so extra labels such as datastore="..." do not matter). A metric
    the agent does not export raises KeyError unless a default is given: a
    missing counter must not read as a reassuring 0.
    """

    def __init__(self, samples):
        self.samples = samples  # [(name, {label: value}, float)]

    def names(self) -> set:
        return {n for n, _, _ in self.samples}

    def value(self, name: str, default=_MISSING, **labels: str) -> float:
        hits = [v for n, l, v in self.samples
                if n == name and all(l.get(k) == want for k, want in labels.items())]
        if hits:
            return sum(hits)
        if default is _MISSING:
            raise KeyError(f"/metrics has no sample {name}{labels or ''}")
        return default

    def __repr__(self):
        return "\n".join(f"{n}{l} {v}" for n, l, v in self.samples)


def parse_metrics(text: str) -> Metrics:
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.append((s.name, dict(s.labels), float(s.value)))
    return Metrics(samples)


# ---------------------------------------------------------------------------
# The agent


class AgentError(RuntimeError):
    pass


class Agent:
    """One goldcached over a Workspace. start() returns when it reported READY=1."""

    def __init__(self, ws: Workspace, *, templates: Iterable[str] = ("templates/**",),
                 nonpersistent: Iterable[str] = ("pool/**",), cache_size: Optional[str] = None,
                 chunk_size: Optional[str] = None, log_level: str = "info",
                 extra_args: Iterable[str] = (), binary: Optional[str] = None,
                 mountpoint: Optional[str] = None, cache_dir: Optional[str] = None,
                 datastore: Optional[str] = None, stats_host: str = "127.0.0.1",
                 config: Optional[str] = None, port: int = 0, settle: Optional[str] = "0s"):
        self.ws = ws
        # --stats-listen STATS_HOST:PORT; the tests still connect via 127.0.0.1.
        self.stats_host = stats_host
        # config: run `goldcached --config CONFIG EXTRA_ARGS...` instead of the
        # flags below; the file must name this agent's mountpoint, cache dir,
        # control socket and `port` (which start() then uses as it is).
        self.config = config
        self.fixed_port = port
        # --datastore: the workspace's datastore/ directory, or any source the
        # agent accepts (an nfs:// URL of a GaneshaRig, say).
        self.datastore = datastore or ws.datastore
        self.binary = binary or default_binary()
        self.templates = list(templates)
        self.nonpersistent = list(nonpersistent)
        self.cache_size = cache_size
        self.chunk_size = chunk_size
        self.log_level = log_level
        # --settle: tests write a template and read it at once; the agent's
        # default (10 s) would serve those reads uncached. None: the default.
        self.settle = settle
        self.extra_args = list(extra_args)
        self.mountpoint = mountpoint or ws.mountpoint
        self.cache_dir = cache_dir or ws.cache_dir
        # Its own control socket: the default one belongs to the host's agent.
        self.control_socket = os.path.join(ws.root, f"control-{os.path.basename(self.mountpoint)}.sock")
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.starts = 0
        self.log_path = ""
        self.status = ""  # last STATUS= the agent sent

    # -- lifecycle --

    def argv(self) -> list[str]:
        settle = ["--settle", self.settle] if self.settle is not None else []
        if self.config:
            return [self.binary, "--config", self.config] + settle + self.extra_args
        args = [self.binary, "--datastore", self.datastore, "--mountpoint", self.mountpoint,
                "--cache-dir", self.cache_dir, "--stats-listen", f"{self.stats_host}:{self.port}",
                "--log-level", self.log_level, "--control-socket", self.control_socket]
        if self.cache_size:
            args += ["--cache-size", self.cache_size]
        if self.chunk_size:
            args += ["--chunk-size", self.chunk_size]
        args += settle
        for g in self.templates:
            args += ["--template", g]
        for g in self.nonpersistent:
            args += ["--nonpersistent", g]
        return args + self.extra_args

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the goldcache CLI against this agent."""
        binary = os.path.join(os.path.dirname(self.binary), "goldcache")
        r = subprocess.run([binary, "--socket", self.control_socket, *args], capture_output=True,
                           text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"goldcache {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def desktops(self) -> dict:
        """`goldcache list --json` desktops, by datastore-relative path."""
        import json

        return {d["path"]: d for d in json.loads(self.cli("list", "--json").stdout)["desktops"]}

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = READY_TIMEOUT_S) -> "Agent":
        if self.running():
            raise AgentError("agent already running")
        if not os.access(self.binary, os.X_OK):
            raise AgentError(f"goldcached binary not found or not executable: {self.binary}")
        self.starts += 1
        self.port = self.fixed_port or free_port()
        # One log per agent (and start): agents of one workspace are told
        # apart by their mountpoints.
        who = "" if self.mountpoint == self.ws.mountpoint else "-" + os.path.basename(self.mountpoint)
        self.log_path = os.path.join(self.ws.root, f"agent{who}.{self.starts}.log")
        sock_path = os.path.join(self.ws.root, f"notify.{self.starts}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(sock_path)
            env = dict(os.environ, NOTIFY_SOCKET=sock_path)
            with open(self.log_path, "ab") as log:
                log.write(("$ " + " ".join(self.argv()) + "\n").encode())
                log.flush()
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env,
                                             preexec_fn=_die_with_parent, close_fds=True)
            self._wait_ready(sock, timeout)
        finally:
            sock.close()
            try:
                os.unlink(sock_path)
            except OSError:
                pass
        if not is_mounted(self.mountpoint):
            raise AgentError(f"agent said READY=1 but {self.mountpoint} is not mounted\n"
                             + self.log_tail())
        return self

    def _wait_ready(self, sock: socket.socket, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"no READY=1 from goldcached (pid {self.pid}) within {timeout:.0f} s\n"
                                 + self.log_tail())
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if ready:
                msg = sock.recv(65536).decode("utf-8", "replace")
                for line in msg.splitlines():
                    if line.startswith("STATUS="):
                        self.status = line[len("STATUS="):]
                if "READY=1" in msg.splitlines():
                    return
            elif self.proc.poll() is not None:
                raise AgentError(f"goldcached exited with {self.proc.returncode} before READY=1\n"
                                 + self.log_tail())

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait: the agent must unmount and exit. Returns its exit code."""
        if not self.proc:
            raise AgentError("agent was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AgentError(f"goldcached (pid {self.pid}) did not exit within {timeout:.0f} s "
                             f"of SIGTERM\n" + self.log_tail()) from None
        return rc

    def kill9(self) -> None:
        """SIGKILL: no unmount, no flush; the mount stays behind, dead."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> "Agent":
        if self.running():
            self.stop()
        return self.start(timeout)

    def terminate(self) -> list[str]:
        """Finalizer: ends our agent by PID whatever its state. Returns problems seen."""
        problems = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                problems.append(f"goldcached pid {self.pid} ignored SIGTERM for "
                                f"{STOP_TIMEOUT_S:.0f} s; sent SIGKILL")
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return problems

    # -- observation --

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return r.read()

    def metrics(self) -> Metrics:
        return parse_metrics(self.get("/metrics").decode("utf-8"))

    def wait_metric(self, name: str, pred: Callable[[float], bool], timeout: float = 30.0,
                    **labels: str) -> float:
        """Polls /metrics until pred(value) holds; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.metrics().value(name, default=float("nan"), **labels)
            if v == v and pred(v):
                return v
            if time.monotonic() > deadline:
                raise AgentError(f"{name}{labels or ''} = {v} did not reach the expected value "
                                 f"within {timeout:.0f} s")
            time.sleep(0.05)

    def wait_index_durable(self, timeout: float = 30.0) -> None:
        """Waits until every index change is in RocksDB (pending records == 0)."""
        self.wait_metric("goldcache_index_pending_records", lambda v: v == 0, timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no agent log)"
        return f"--- last {min(lines, len(data))} lines of {self.log_path} ---\n" + "\n".join(
            data[-lines:])


def run_to_exit(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs a goldcached (or any command) expected to exit by itself, e.g. one
    refusing a bad setting, and returns its exit code and output (stderr merged
    into stdout). If it is still running after `timeout` seconds it is
    SIGTERMed (it may have mounted something: the caller's workspace cleanup
    unmounts it) and AssertionError reports what it printed."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            preexec_fn=_die_with_parent, close_fds=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(argv)} was still running after {timeout:.0f} s "
                             f"(expected it to exit); its output:\n{out}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


# ---------------------------------------------------------------------------
# Data


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random content (same seed, same bytes)."""
    rnd = random.Random(seed)
    piece = 16 * MiB  # randbytes() of more than 256 MiB overflows a C int
    return b"".join(rnd.randbytes(min(piece, size - off)) for off in range(0, size, piece))


def write_file(path: str, data: bytes, mtime_ns: Optional[int] = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# fallocate(2), which Python's os module offers only as posix_fallocate.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class DiskModel(bytearray):
    """The bytes a desktop disk should read as right now, kept beside the real
    file by tests that write it: the same operations, on memory."""

    def write(self, off: int, buf: bytes) -> None:
        end = off + len(buf)
        if end > len(self):
            self += bytes(end - len(self))
        self[off:end] = buf

    def truncate(self, size: int) -> None:
        if size < len(self):
            del self[size:]
        else:
            self += bytes(size - len(self))

    def zero(self, off: int, length: int) -> None:
        """A punched hole or zeroed range (never past the end)."""
        end = min(off + length, len(self))
        if off < end:
            self[off:end] = bytes(end - off)


class DirectReader:
    """Reads a file with O_DIRECT (no page cache) into an aligned buffer;
    `writable` opens it O_RDWR for pwrite() too."""

    def __init__(self, path: str, max_io: int = MiB, writable: bool = False):
        self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_DIRECT)
        self.buf = mmap.mmap(-1, max_io)  # page aligned
        self.view = memoryview(self.buf)

    def pread(self, offset: int, length: int) -> bytes:
        """One O_DIRECT read; `length` and `offset` must be 4 KiB aligned."""
        n = os.preadv(self.fd, [self.view[:length]], offset)
        return bytes(self.view[:n])

    def pwrite(self, offset: int, data: bytes) -> None:
        """One whole O_DIRECT write, aligned as pread()."""
        self.view[:len(data)] = data
        assert os.pwritev(self.fd, [self.view[:len(data)]], offset) == len(data)

    def close(self) -> None:
        self.view.release()
        self.buf.close()
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def block_orders(nblocks: int, seed: int = 1) -> dict[str, list[int]]:
    """Named visiting orders of blocks 0..nblocks-1, each a permutation."""
    rnd = random.Random(seed)
    perm = list(range(nblocks))
    rnd.shuffle(perm)
    perm2 = list(range(nblocks))
    random.Random(seed + 1).shuffle(perm2)
    stride = 7
    strided = [i for s in range(stride) for i in range(s, nblocks, stride)]
    half = nblocks / 2
    middle_out = sorted(range(nblocks), key=lambda i: (abs(i + 0.5 - half), i))
    return {
        "sequential": list(range(nblocks)),
        "reverse": list(range(nblocks - 1, -1, -1)),
        "random": perm,
        "random2": perm2,
        "strided7": strided,
        "middle_out": middle_out,
        "odd_then_even": list(range(1, nblocks, 2)) + list(range(0, nblocks, 2)),
        "halves_swapped": list(range(nblocks // 2, nblocks)) + list(range(nblocks // 2)),
    }


def read_compare(path: str, expected: bytes, order: list[int], block: int) -> list[int]:
    """Reads `path` block by block in `order` with O_DIRECT, compares each block
    with `expected`. Returns the offsets of blocks that differed (or were short)."""
    bad = []
    with DirectReader(path, block) as r:
        for i in order:
            off = i * block
            want = expected[off:off + block]
            got = r.pread(off, block)
            if got != want:
                bad.append(off)
    return bad


def read_all_direct(path: str, size: int, block: int = MiB) -> bytes:
    out = bytearray()
    with DirectReader(path, block) as r:
        off = 0
        while off < size:
            chunk = r.pread(off, block)
            if not chunk:
                break
            out += chunk
            off += len(chunk)
    return bytes(out)


def first_difference(a: bytes, b: bytes) -> Optional[int]:
    if a == b:
        return None
    n = min(len(a), len(b))
    step = MiB
    for base in range(0, n, step):
        if a[base:base + step] != b[base:base + step]:
            for i in range(base, min(base + step, n)):
                if a[i] != b[i]:
                    return i
    return n


def assert_same_content(got: bytes, want: bytes, what: str) -> None:
    """Asserts equality without dumping megabytes of bytes into the report."""
    if got != want:
        off = first_difference(got, want)
        raise AssertionError(f"{what}: content differs from the source at byte {off} "
                             f"(got {len(got)} bytes, expected {len(want)})")


# The local store (cache/chunk_store.h): store.dat, one slot per chunk, each
# slot 4 KiB-aligned meta (header, checksums) and then the chunk's data.
STORE_FILE = "store.dat"


def store_slot_layout(chunk: int) -> tuple[int, int]:
    """(stride, data offset within a slot) of store.dat for a chunk size."""
    meta = (64 + chunk // (4 * KiB) * 4 + 4 * KiB - 1) // (4 * KiB) * (4 * KiB)
    return chunk + meta, meta


def sha256_file(path: str, block: int = 4 * MiB) -> str:
    """Hex sha256 of a file's content, read in blocks (sparse files are fine)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            piece = f.read(block)
            if not piece:
                return h.hexdigest()
            h.update(piece)


def tree_snapshot(root: str) -> dict:
    """Everything a write could change under `root` (atime aside): for each path,
    its type, mode, owner, size, inode, mtime and ctime, plus the sha256 of a
    file's content or a symlink's target. Two equal snapshots mean nothing under
    `root` was written, created, removed, renamed or chmod-ed in between."""
    import stat as st

    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(filenames) + dirnames:
            path = os.path.join(dirpath, name) if name else dirpath
            s = os.lstat(path)
            entry = (st.S_IFMT(s.st_mode), st.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_size,
                     s.st_ino, s.st_mtime_ns, s.st_ctime_ns)
            if st.S_ISREG(s.st_mode):
                entry += (sha256_file(path),)
            elif st.S_ISLNK(s.st_mode):
                entry += (os.readlink(path),)
            snap[os.path.relpath(path, root)] = entry
    return snap


def wait_until(pred: Callable[[], object], what: str, timeout: float = 30.0,
               interval: float = 0.05):
    """Polls pred() until it returns something truthy; returns that. Raises
    AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(interval)


def datastore_writes(m: Metrics) -> dict:
    """The agent's own count of what it wrote to the datastore (data and
    metadata). All zero means it never wrote there."""
    return {
        "goldcache_datastore_write_bytes_total": m.value("goldcache_datastore_write_bytes_total"),
        "goldcache_datastore_write_ops_total": m.value("goldcache_datastore_write_ops_total"),
        "goldcache_datastore_metadata_ops_total{access=write}":
            m.value("goldcache_datastore_metadata_ops_total", access="write"),
    }


NO_DATASTORE_WRITES = {
    "goldcache_datastore_write_bytes_total": 0,
    "goldcache_datastore_write_ops_total": 0,
    "goldcache_datastore_metadata_ops_total{access=write}": 0,
}


def local_budget(m: Metrics) -> float:
    """The read cache's capacity plus the space it has lent ahead to the
    overlays and they have not used: --cache-size while no overlay holds
    disk-tier space."""
    return m.value("goldcache_cache_capacity_bytes") + \
        m.value("goldcache_overlay_space_pool_bytes")


# ---------------------------------------------------------------------------
# Reading an NFS datastore directly (libnfs-utils), beside the agent


def nfs_cat(url: str, timeout: float = 120.0) -> bytes:
    """The file at a libnfs URL (nfsrig.GaneshaRig.url(path)), read over NFS
    with `nfs-cat`, bypassing goldcache. Raises AssertionError if it fails."""
    r = subprocess.run(["nfs-cat", url], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"nfs-cat {url} exited {r.returncode}: "
                             f"{r.stderr.decode('utf-8', 'replace').strip()}")
    return r.stdout


def nfs_ls(url: str, timeout: float = 60.0) -> dict:
    """`nfs-ls` of a directory URL: {name: (mode string, size)}, without . and .."""
    r = subprocess.run(["nfs-ls", url], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"nfs-ls {url} exited {r.returncode}: {r.stderr.strip()}")
    out = {}
    for line in r.stdout.splitlines():
        # "-rw-r--r--  1     0     0            3 f.txt": mode nlink uid gid size name
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5] not in (".", ".."):
            out[fields[5]] = (fields[0], int(fields[4]))
    return out


def proc_io(pid: int) -> dict:
    """/proc/PID/io as ints: rchar is every byte the process got from read-type
    syscalls (files, and pipes/sockets read with read()), cached or not."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}


# ---------------------------------------------------------------------------
# CLI


def _cli_wait_ready(path: str, timeout: float) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock.bind(path)
    print("bound", flush=True)  # tells the caller it may start the agent now
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.2)
            if ready and "READY=1" in sock.recv(65536).decode("utf-8", "replace").splitlines():
                print("READY=1", flush=True)
                return 0
        print(f"no READY=1 within {timeout:.0f} s", file=sys.stderr)
        return 1
    finally:
        sock.close()
        os.unlink(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gcrig.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-ready", help="bind SOCKET and wait for READY=1 from sd_notify")
    w.add_argument("socket")
    w.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    sub.add_parser("clear-stale", help="unmount and remove workspaces of dead runs")
    a = p.parse_args(argv)
    if a.cmd == "wait-ready":
        return _cli_wait_ready(a.socket, a.timeout)
    clear_stale(log=lambda s: print(s, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# A boot storm: eight desktops, (order name, IO size), each reading the whole
# template once in its own order.
STORM_READERS = [
    ("sequential", MiB),
    ("reverse", MiB),
    ("random", MiB),
    ("strided7", MiB),
    ("middle_out", MiB),
    ("random2", 64 * KiB),
    ("odd_then_even", 64 * KiB),
    ("halves_swapped", 256 * KiB),
]


def storm(path: str, data: bytes, readers=STORM_READERS) -> dict:
    """Runs the readers at once (O_DIRECT); returns {reader: [bad offsets]}."""
    barrier = threading.Barrier(len(readers))

    def run(reader):
        name, block = reader
        order = block_orders(len(data) // block, seed=7)[name]
        barrier.wait(60)
        return f"{name}/{block // KiB}K", read_compare(path, data, order, block)

    with ThreadPoolExecutor(len(readers)) as ex:
        return dict(ex.map(run, readers))


# ---------------------------------------------------------------------------
# Real clients


def run_tool(cmd, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Runs a client (qemu-img, qemu-io, ...): output merged, never raises on exit code."""
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=cwd, timeout=timeout, check=False)


def qemu_io(path, *commands, fmt="qcow2", readonly=False) -> subprocess.CompletedProcess:
    """qemu-io with cache=none (O_DIRECT), one -c per command."""
    cmd = ["qemu-io", "-f", fmt, "-t", "none"] + (["-r"] if readonly else [])
    for c in commands:
        cmd += ["-c", c]
    return run_tool(cmd + [path])


def qemu_io_ok(r: subprocess.CompletedProcess) -> bool:
    """qemu-io exits 0 even when a `read -P` pattern check fails."""
    return r.returncode == 0 and "Pattern verification failed" not in r.stdout


def wait_desktop_closed(agent, rel):
    """Until the agent has released every handle of desktop `rel` (FUSE sends
    the release after close() returns); its `list` entry, or None once its
    overlay was discarded."""
    state = {}

    def closed():
        d = agent.desktops().get(rel)
        state["d"] = d
        return d is None or d["open_handles"] == 0

    wait_until(closed, f"{rel} has no open handle")
    return state["d"]
