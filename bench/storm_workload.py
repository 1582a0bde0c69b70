"""The VDI workload of bench/storm: template content, desktops, phases.

Pure Python, no IO besides writing files: it decides what every desktop reads
and writes, in which order, and what each read must return. bench/storm.py
runs the streams through qemu-io and measures them.

Content. A template is one byte value per 64 KiB window (never 0x00, so a
hole or a zero-filled page is caught): every read that stays inside a window
of template data can be checked with qemu-io's `read -P`. A desktop's write
uses a pattern byte that differs from what the range held before, and the
desktop's DiskState remembers it per 4 KiB block, so a read of its own writes
is checked too. A read whose range holds several values is checked on its
longest uniform run (`read -P B -s START -l LEN`); `verified_bytes` counts
what was checked.

Shape (scaled down from a Windows boot: ~500 MB read, 20-30 MB written in
~70,000 IOs):
- the boot set: files in directories of the template, the same for every
  desktop of it (one OS image); a boot reads them in nearly the same order
  (each desktop perturbs it and skips a few), small files in 4-64 KiB reads
  in random order inside the file, large files as sequential runs of 64 KiB
  reads; one write per four reads (80/20 by ops): logs and registry hives
  (boot files written in place) and the page file/temp area (the disk's last
  tenth, mostly appends);
- steady: 20/80 read/write, 4-16 KiB mostly, at a set rate per desktop
  (Poisson arrivals: qemu-io `sleep` between ops); reads half of recent own
  writes, half of an application set shared by all desktops;
- AV sweep: the whole disk once, sequentially, in 64 KiB reads;
- reboot: every desktop closes (its overlay is discarded) and boots again.

Every choice comes from random.Random seeded by (seed, desktop, phase,
cycle): the same seed gives the same streams, whatever N or the mode.

Phases are objects in PHASES; a new one (patch day: a new template
generation, then every desktop reboots; a boot replayed from a recorded
trace) is a class with `ops()` and, if it needs the rig, a `before()` hook.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Optional

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

BLOCK = 4 * KiB    # the unit of a desktop's own-write map
WINDOW = 64 * KiB  # the unit of the template's content
BLOCKS_PER_WINDOW = WINDOW // BLOCK

_M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finalizer: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


# ---------------------------------------------------------------------------
# Templates


class Template:
    """A template's content: window w holds byte window_byte(w), 1..255.

    `generation` is there for a patch-day phase: generation g > 0 changes the
    windows of `changed_fraction` of the chunks (chunk_size bytes each) and
    keeps the rest, as a patched golden image does."""

    def __init__(self, size: int, seed: int, generation: int = 0,
                 changed_fraction: float = 0.0, chunk_size: int = MiB):
        if size % WINDOW:
            raise ValueError(f"template size {size} is not a multiple of {WINDOW}")
        self.size, self.seed = size, seed
        self.generation, self.changed_fraction = generation, changed_fraction
        self.chunk_size = chunk_size
        self.windows = size // WINDOW
        self._bytes = bytes(self._byte(w) for w in range(self.windows))

    def _byte(self, w: int) -> int:
        gen = 0
        if self.generation:
            chunk = w * WINDOW // self.chunk_size
            for g in range(self.generation, 0, -1):
                if mix64(self.seed * 7919 + g * 104729 + chunk) % 10_000 < \
                        self.changed_fraction * 10_000:
                    gen = g
                    break
        return 1 + mix64((self.seed << 20) ^ (gen << 48) ^ w) % 255

    def window_byte(self, w: int) -> int:
        return self._bytes[w]

    def write(self, path: str) -> None:
        """Writes the template (or a raw full clone of it) to `path`, fsynced."""
        import os

        with open(path, "wb") as f:
            run = []
            for w in range(self.windows):
                run.append(bytes([self._bytes[w]]) * WINDOW)
                if len(run) == 256:  # 16 MiB per write
                    f.write(b"".join(run))
                    run = []
            f.write(b"".join(run))
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------
# What a desktop's disk holds


class DiskState:
    """What a desktop's disk reads as: the template, and its own writes since boot."""

    def __init__(self, template: Template):
        self.template = template
        self.own = bytearray(template.size // BLOCK)  # 0: template; else the pattern written

    def reset(self) -> None:
        """The desktop shut down: its overlay was discarded."""
        self.own = bytearray(self.template.size // BLOCK)

    def runs(self, off: int, length: int) -> list[tuple[int, int, int]]:
        """[(start, length, byte)] of uniform content covering [off, off+length)."""
        b0, b1 = off // BLOCK, (off + length) // BLOCK
        own = self.own
        tb = self.template._bytes
        w = b0 // BLOCKS_PER_WINDOW
        if (b1 - 1) // BLOCKS_PER_WINDOW == w and not any(own[b0:b1]):
            return [(off, length, tb[w])]  # the common case: one window of template
        out: list[tuple[int, int, int]] = []
        b = b0
        while b < b1:
            w = b // BLOCKS_PER_WINDOW
            wend = min(b1, (w + 1) * BLOCKS_PER_WINDOW)
            seg = own[b:wend]
            if seg.count(0) == len(seg):  # the common case: untouched template
                byte, n = tb[w], wend - b
                if out and out[-1][2] == byte and out[-1][0] + out[-1][1] == b * BLOCK:
                    s, ln, _ = out.pop()
                    out.append((s, ln + n * BLOCK, byte))
                else:
                    out.append((b * BLOCK, n * BLOCK, byte))
                b = wend
                continue
            for i in range(b, wend):
                byte = own[i] or tb[w]
                if out and out[-1][2] == byte and out[-1][0] + out[-1][1] == i * BLOCK:
                    s, ln, _ = out.pop()
                    out.append((s, ln + BLOCK, byte))
                else:
                    out.append((i * BLOCK, BLOCK, byte))
            b = wend
        return out

    def is_own(self, off: int, length: int) -> str:
        """'own' if every block of the range was written by the desktop,
        'tmpl' if none was, 'mixed' otherwise."""
        seg = self.own[off // BLOCK:(off + length) // BLOCK]
        zeros = seg.count(0)
        return "tmpl" if zeros == len(seg) else ("own" if zeros == 0 else "mixed")

    def write(self, off: int, length: int, byte: int) -> None:
        b0, n = off // BLOCK, length // BLOCK
        self.own[b0:b0 + n] = bytes([byte]) * n

    def fresh_pattern(self, rng: random.Random, off: int, length: int) -> int:
        """A pattern byte that differs from everything the range holds now, so a
        lost or misplaced write is caught."""
        present = {r[2] for r in self.runs(off, length)}
        while True:
            b = rng.randrange(1, 256)
            if b not in present:
                return b


# ---------------------------------------------------------------------------
# Operations


@dataclass
class Op:
    """One qemu-io command. kind: 'r' read, 'w' write, 's' sleep (off = ms)."""
    kind: str
    off: int
    length: int = 0
    pattern: int = 0        # read: expected byte of the verified run; write: the byte
    vstart: int = 0         # read: verified run, relative to off
    vlen: int = 0
    cls: str = ""           # read: 'tmpl' | 'own' | 'mixed' (what the range held)

    def command(self) -> str:
        if self.kind == "r":
            if self.vstart == 0 and self.vlen == self.length:
                return f"read -P 0x{self.pattern:02x} {self.off} {self.length}"
            return (f"read -P 0x{self.pattern:02x} -s {self.vstart} -l {self.vlen} "
                    f"{self.off} {self.length}")
        if self.kind == "w":
            return f"write -P 0x{self.pattern:02x} {self.off} {self.length}"
        return f"sleep {self.off}"


def read_op(state: DiskState, off: int, length: int) -> Op:
    runs = state.runs(off, length)
    start, ln, byte = max(runs, key=lambda r: r[1])
    return Op("r", off, length, byte, start - off, ln, state.is_own(off, length))


def write_op(state: DiskState, rng: random.Random, off: int, length: int) -> Op:
    byte = state.fresh_pattern(rng, off, length)
    state.write(off, length, byte)
    return Op("w", off, length, byte)


def pick(rng: random.Random, table: tuple[tuple[int, int], ...]) -> int:
    """A value from ((value, weight), ...)."""
    total = sum(w for _, w in table)
    x = rng.random() * total
    for v, w in table:
        x -= w
        if x < 0:
            return v
    return table[-1][0]


def tile(rng: random.Random, start: int, end: int, sizes: tuple[tuple[int, int], ...]
         ) -> list[tuple[int, int]]:
    """Cuts [start, end) (4 KiB aligned) into pieces of the given sizes, each
    naturally aligned (so none crosses a 64 KiB window)."""
    out, p = [], start
    while p < end:
        k = pick(rng, sizes)
        while k > BLOCK and (p % k or p + k > end):
            k //= 2
        out.append((p, k))
        p += k
    return out


SMALL_READS = ((4 * KiB, 35), (8 * KiB, 20), (16 * KiB, 20), (32 * KiB, 10), (64 * KiB, 15))
SEQ_READS = ((64 * KiB, 1),)
BOOT_WRITES = ((4 * KiB, 50), (8 * KiB, 20), (16 * KiB, 15), (32 * KiB, 5), (64 * KiB, 10))
STEADY_WRITES = ((4 * KiB, 60), (8 * KiB, 25), (16 * KiB, 10), (64 * KiB, 5))
STEADY_READS = ((4 * KiB, 50), (8 * KiB, 25), (16 * KiB, 15), (64 * KiB, 10))
SEQUENTIAL_FILE = 256 * KiB  # larger files are read as sequential runs


# ---------------------------------------------------------------------------
# The template's file sets, shared by all desktops


@dataclass
class File:
    off: int
    size: int
    mutable: bool  # written in place at boot (logs, registry hives)


class FileSet:
    """Files in directories of the template that every desktop reads: the
    same OS image, the same boot (or the same applications)."""

    def __init__(self, size: int, fraction: float, seed: int, data_end: int):
        rng = random.Random(seed)
        target = max(BLOCK, int(size * fraction))
        ndirs = max(2, min(64, size // (64 * MiB)))
        dirs = sorted(rng.randrange(0, data_end // WINDOW) * WINDOW for _ in range(ndirs))
        spread = max(WINDOW, min(8 * MiB, data_end // (4 * ndirs)))
        max_file = max(BLOCK, min(4 * MiB, target // 8))
        self.files: list[File] = []
        total, d = 0, rng.randrange(ndirs)
        while total < target:
            if rng.random() > 0.7:  # most files sit beside the previous one's directory
                d = rng.randrange(ndirs)
            # Many small files (DLLs, configs, registry hives), a few large ones
            # (the kernel, drivers, big libraries) that hold most of the bytes.
            lo, hi = ((4 * KiB, SEQUENTIAL_FILE) if rng.random() < 0.85
                      else (SEQUENTIAL_FILE, max_file))
            hi = max(lo, min(hi, max_file))
            fsize = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            fsize = max(BLOCK, min(fsize, target - total) // BLOCK * BLOCK)
            off = dirs[d] + int(abs(rng.gauss(0, spread))) // BLOCK * BLOCK
            off = min(off, data_end - fsize)
            self.files.append(File(off, fsize, rng.random() < 0.08))
            total += fsize
        self.bytes = total
        self.mutable = [f for f in self.files if f.mutable] or self.files[:1]


# ---------------------------------------------------------------------------
# Desktops


class Desktop:
    """One desktop's generator: its disk state and its random streams."""

    def __init__(self, index: int, template: Template, boot_set: FileSet, app_set: FileSet,
                 scratch: tuple[int, int], seed: int):
        self.index, self.template = index, template
        self.boot_set, self.app_set = boot_set, app_set
        self.scratch = scratch  # [start, end) of the page file / temp area
        self.seed = seed
        self.state = DiskState(template)
        self.cycle = 0           # boots so far
        self.cursor = scratch[0]  # where the page file / logs append next
        self.recent: list[tuple[int, int]] = []  # recent own writes, for re-reads

    def rng(self, phase: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.index}/{phase}/{self.cycle}")

    def scratch_write(self, rng: random.Random, sizes) -> tuple[int, int]:
        """A write to the page file / temp area: mostly appends at the cursor,
        else a rewrite of something written in the last MiB."""
        lo, hi = self.scratch
        k = pick(rng, sizes)
        if rng.random() < 0.8 or self.cursor - lo < MiB:
            off = self.cursor
            if off + k > hi:
                off = lo
        else:
            off = self.cursor - MiB + rng.randrange(MiB // BLOCK) * BLOCK
        off = off // k * k  # naturally aligned
        self.cursor = max(self.cursor, off + k) if off >= self.cursor - MiB else off + k
        return off, k

    def in_file_write(self, rng: random.Random, f: File, sizes) -> tuple[int, int]:
        k = pick(rng, sizes)
        while k > f.size or k > BLOCK and f.off % k:
            k //= 2
        k = max(BLOCK, k)
        slots = max(1, (f.size - k) // k + 1)
        return f.off + rng.randrange(slots) * k, k

    def remember(self, off: int, k: int) -> None:
        self.recent.append((off, k))
        if len(self.recent) > 256:
            del self.recent[:128]


class Phase:
    """A step of the scenario, run by every desktop at once.

    reopen: before it, every desktop closes its disk (the agent discards the
    overlay on the last close: the VM shut down) and opens it again (boots).
    boot: each desktop's time to run its stream is a boot time."""
    name = ""
    reopen = False
    boot = False

    def ops(self, d: Desktop) -> list[Op]:
        raise NotImplementedError

    def describe(self, cfg: "Workload") -> str:
        return ""


class Boot(Phase):
    name, boot = "boot", True
    write_every = 4     # one write per four reads: 80/20 by ops
    own_writes = 0.1    # writes of this desktop's own choosing; the rest are every boot's
    skip = 0.02         # files a desktop's boot does not read

    def ops(self, d: Desktop) -> list[Op]:
        rng = d.rng(self.name)
        files = d.boot_set.files
        # Every desktop of the image writes the same places at boot (the same
        # OS: its logs, its hives, its page file), with its own bytes: one
        # shared sequence of write positions, from the seed alone.
        shared = Desktop(-1, d.template, d.boot_set, d.app_set, d.scratch, d.seed)
        shared_rng = random.Random(f"{d.seed}/boot-writes")
        # The same boot as every other desktop's, in a slightly different
        # order (services start in parallel), a few files skipped.
        order = sorted(range(len(files)), key=lambda i: i + rng.gauss(0, 3))
        out: list[Op] = []
        reads = 0
        for i in order:
            f = files[i]
            if rng.random() < self.skip:
                continue
            if f.size > SEQUENTIAL_FILE:
                pieces = tile(rng, f.off, f.off + f.size, SEQ_READS)
            else:
                pieces = tile(rng, f.off, f.off + f.size, SMALL_READS)
                rng.shuffle(pieces)
            for off, k in pieces:
                out.append(read_op(d.state, off, k))
                reads += 1
                if reads % self.write_every == 0:
                    out.append(self.write(d, rng, shared, shared_rng))
        d.cursor = shared.cursor
        return out

    def write(self, d: Desktop, rng: random.Random, shared: Desktop,
              shared_rng: random.Random) -> Op:
        if rng.random() < self.own_writes:
            off, k = d.in_file_write(rng, rng.choice(d.boot_set.mutable), BOOT_WRITES)
        elif shared_rng.random() < 0.4:
            off, k = shared.in_file_write(shared_rng, shared_rng.choice(d.boot_set.mutable),
                                          BOOT_WRITES)
        else:
            off, k = shared.scratch_write(shared_rng, BOOT_WRITES)
        d.remember(off, k)
        return write_op(d.state, rng, off, k)

    def describe(self, cfg):
        return (f"reads the boot set ({cfg.boot_set.bytes / MiB:.0f} MiB in "
                f"{len(cfg.boot_set.files)} files, {cfg.boot_fraction:.0%} of the template) "
                f"in 4-64 KiB reads plus 64 KiB sequential runs, one write per "
                f"{self.write_every} reads")


class Reboot(Boot):
    name, reopen = "reboot", True

    def describe(self, cfg):
        return "every desktop closes (overlay discarded) and boots again"


class Steady(Phase):
    name = "steady"

    def __init__(self, seconds: float = 20.0, iops: float = 20.0, read_share: float = 0.2):
        self.seconds, self.iops, self.read_share = seconds, iops, read_share

    def ops(self, d: Desktop) -> list[Op]:
        rng = d.rng(self.name)
        out: list[Op] = []
        n = max(1, int(self.seconds * self.iops))
        for _ in range(n):
            out.append(Op("s", max(0, int(rng.expovariate(self.iops) * 1000))))
            if rng.random() < self.read_share:
                if d.recent and rng.random() < 0.5:
                    off, k = rng.choice(d.recent)
                else:
                    f = rng.choice(d.app_set.files)
                    k = pick(rng, STEADY_READS)  # a power of two; f.off and f.size are 4 KiB aligned
                    while k > f.size or f.off % k:
                        k //= 2
                    off = f.off + rng.randrange((f.size - k) // k + 1) * k
                out.append(read_op(d.state, off, k))
            else:
                x = rng.random()
                if x < 0.5:
                    off, k = d.scratch_write(rng, STEADY_WRITES)
                elif x < 0.8:
                    off, k = d.in_file_write(rng, rng.choice(d.app_set.files), STEADY_WRITES)
                else:
                    off, k = d.in_file_write(rng, rng.choice(d.boot_set.mutable), STEADY_WRITES)
                d.remember(off, k)
                out.append(write_op(d.state, rng, off, k))
        return out

    def describe(self, cfg):
        return (f"{self.seconds:g} s at {self.iops:g} IOPS per desktop (Poisson), "
                f"{self.read_share:.0%} reads, 4-64 KiB")


class Sweep(Phase):
    name = "sweep"
    request = 64 * KiB

    def ops(self, d: Desktop) -> list[Op]:
        return [read_op(d.state, off, self.request)
                for off in range(0, d.template.size, self.request)]

    def describe(self, cfg):
        return f"every desktop reads its whole disk once in {self.request // KiB} KiB reads"


PHASE_ORDER = ("boot", "steady", "sweep", "reboot")


def make_phases(names: list[str], steady_seconds: float, steady_iops: float) -> list[Phase]:
    known = {"boot": Boot, "reboot": Reboot, "sweep": Sweep,
             "steady": lambda: Steady(steady_seconds, steady_iops)}
    out = []
    for n in names:
        if n not in known:
            raise ValueError(f"unknown phase {n!r}; known: {', '.join(known)}")
        out.append(known[n]())
    return out


@dataclass
class Workload:
    """Everything the desktops do, from the seed."""
    template_size: int
    seed: int
    boot_fraction: float
    app_fraction: float = 0.02
    # Patch day: which generation of the template the desktops see (the same
    # files and boot set; `changed_fraction` of the chunks rewritten per
    # generation).
    generation: int = 0
    changed_fraction: float = 0.0
    template: Template = field(init=False)
    boot_set: FileSet = field(init=False)
    app_set: FileSet = field(init=False)
    scratch: tuple[int, int] = field(init=False)

    def __post_init__(self):
        self.template = Template(self.template_size, self.seed, self.generation,
                                 self.changed_fraction)
        # The disk's last tenth is the page file / temp area: written, not in the image's files.
        scratch_lo = (self.template_size * 9 // 10) // WINDOW * WINDOW
        self.scratch = (scratch_lo, self.template_size)
        self.boot_set = FileSet(self.template_size, self.boot_fraction, self.seed * 31 + 1,
                                scratch_lo)
        self.app_set = FileSet(self.template_size, self.app_fraction, self.seed * 31 + 2,
                               scratch_lo)

    def desktop(self, index: int) -> Desktop:
        return Desktop(index, self.template, self.boot_set, self.app_set, self.scratch, self.seed)


def streams(workload: Workload, index: int, phases: list[Phase]) -> list[list[Op]]:
    """Desktop `index`'s ops for each phase, in order (the state carries over;
    a reopening phase starts from the pristine disk)."""
    d = workload.desktop(index)
    out = []
    for ph in phases:
        if ph.reopen:
            d.state.reset()
            d.recent.clear()
            d.cursor = d.scratch[0]
        if ph.boot:
            d.cycle += 1
        out.append(ph.ops(d))
    return out


def percentile(sorted_values, q: float) -> Optional[float]:
    """Nearest rank: the smallest value with at least q of the values at or
    below it (so p99 of 32 values is the largest)."""
    n = len(sorted_values)
    if n == 0:
        return None
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> Optional[float]:
    """Prometheus-style quantile of a histogram's cumulative (le, count)
    buckets: linear inside the bucket that holds the rank; None if empty. A
    rank in the +Inf bucket answers the largest finite bound."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    i = bisect.bisect_left([c for _, c in buckets], rank)
    i = min(i, len(buckets) - 1)
    le, c = buckets[i]
    if math.isinf(le):
        return buckets[i - 1][0] if i > 0 else None
    lo_le, lo_c = (buckets[i - 1] if i > 0 else (0.0, 0.0))
    if c == lo_c:
        return le
    return lo_le + (le - lo_le) * (rank - lo_c) / (c - lo_c)
