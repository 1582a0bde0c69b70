"""Soak: 16 nonpersistent desktops and 2 templates under a randomized,
model-checked load, for GOLDCACHE_SOAK_SECONDS (default 120 s, the CI run;
`scripts/soak.sh` runs 30 minutes).

The datastore holds templates/a.img and templates/b.img and 16 raw full clones
pool/d0..d15.img: some are copies of a part of a template at a chunk-aligned
offset (their chunks are the template's, content-addressed), some at an
unaligned offset (the same bytes, other chunks), some have their own content.
The agent gets a small overlay RAM tier (per desktop and host-wide), so the
desktops' writes spill to the disk tier and its segments are compacted, and
a read cache smaller than what is read, so it evicts.

One worker thread per desktop, each with its own seeded generator and its
own model (the bytes the desktop must read right now), runs sessions: open
(O_DIRECT with aligned IO from mmap buffers, or buffered unaligned IO; one
mode per session), then a random mix of pwrite, pread (every byte checked
against the model), ftruncate shrink and extend, fsync/fdatasync, fallocate
punch-hole / zero-range / allocate, `goldcache reset --force` (the handle
reads the pristine file from then on), and finally close. Right after the
close (the kernel sends RELEASE after close(2) returned: the next OPEN, or
stat, may overtake it) a stat by path must show the datastore's size, and the
desktop is reopened, sometimes after a `goldcache reset` (refused or a no-op
for a closed desktop, as the product specifies), and must read exactly the
datastore's bytes again. Two threads read the templates
with O_DIRECT and check every byte; an operator thread runs `goldcache
evict`, `warm [--pin]`, `check`, `stats`, `list`, `status` and scrapes
/metrics meanwhile.

Deterministic given GOLDCACHE_SOAK_SEED, except for the interleaving of the
threads (and so how many operations fit in the time). Every thread does its
minimum work whatever the duration (the floors asserted at the end then say
that no thread died early, not how fast the machine is). At the end: no
wrong byte, no unexpected errno, no error of the agent's own, the disk tier
spilled and compacted, every overlay gone after its last close, the
datastore tree unchanged and never written, the agent stops cleanly, and
(asserted last, being about attributes, not bytes) no stat right after a
last close showed the closed session's size."""

import collections
import errno
import json
import mmap
import os
import random
import threading
import time

import gcrig
from gcrig import KiB, MiB

SECONDS = float(os.environ.get("GOLDCACHE_SOAK_SECONDS", "120"))
SEED = int(os.environ.get("GOLDCACHE_SOAK_SEED", "20261121"))

TEMPLATE_SIZE = 32 * MiB
TEMPLATES = {"templates/a.img": 7001, "templates/b.img": 7002}
DESKTOPS = 16
DESKTOP_SIZE = 8 * MiB
MIN_SIZE = 2 * MiB   # truncates stay in [MIN_SIZE, MAX_SIZE]
MAX_SIZE = 10 * MiB  # nothing is written past it: bounds each overlay's live data
MAX_IO = 1 * MiB
PAGE = 4 * KiB

# Local disk budget: the read cache and the desktops' disk tier share it.
# Sixteen overlays can hold 160 MiB live (plus garbage the disk tier keeps
# until it compacts), so the budget leaves them room; the read cache gets
# what is left, less than the 128 MiB of distinct chunks the load reads, so
# it evicts whenever the overlays are large. A write refused with ENOSPC
# (the product's answer when both are full) is allowed, must change
# nothing, and is reported.
CACHE_SIZE = "256MiB"
OVERLAY_RAM = "1MiB"       # per desktop: nearly every write spills
OVERLAY_RAM_HOST = "8MiB"  # host-wide: less than 16 x 1 MiB, the host cap bites too

MEAN_SESSION_OPS = 150     # a session ends with probability 1/MEAN_SESSION_OPS per op
RESET_CLOSED_SHARE = 0.25  # of closes, followed by `goldcache reset` before the reopen
RESET_FORCE_PER_OP = 1 / 400
# A long session writes this much before it may close: more than one 64 MiB
# disk-tier segment over at most MAX_SIZE live bytes, so segments seal with
# mostly garbage and are compacted. The first sessions of two workers are
# long (the run always compacts), and a few others at random.
LONG_SESSION_BYTES = 96 * MiB
LONG_FIRST_SESSION = (0, 8)
LONG_SESSION_SHARE = 1 / 60

MIN_DESKTOP_OPS = 300
MIN_TEMPLATE_READS = 300
JOIN_TIMEOUT_S = 120  # after the run's end, for every thread to finish its op
MAX_FINDINGS = 20     # then the run stops early: the report has enough

def desktop_layout(templates):
    """{rel: (how, bytes)} of the 16 desktops: by i % 4, own content; a copy of
    template a at a chunk-aligned offset (d1, d5, ... overlap each other: their
    chunks are the template's and each other's); of b, likewise; or of a at an
    offset 12 KiB past a chunk boundary (the template's bytes, other chunks)."""
    a, b = templates["templates/a.img"], templates["templates/b.img"]
    out = {}
    for i in range(DESKTOPS):
        k = i // 4
        if i % 4 == 0:
            how, data = "own", gcrig.random_bytes(DESKTOP_SIZE, 7100 + i)
        elif i % 4 == 1:
            off = k * 4 * MiB
            how, data = f"a@{off // MiB}MiB", a[off:off + DESKTOP_SIZE]
        elif i % 4 == 2:
            off = k * 4 * MiB
            how, data = f"b@{off // MiB}MiB", b[off:off + DESKTOP_SIZE]
        else:
            off = k * 4 * MiB + 12 * KiB
            how, data = f"a@{off // KiB}KiB", a[off:off + DESKTOP_SIZE]
        assert len(data) == DESKTOP_SIZE
        out[f"pool/d{i}.img"] = (how, data)
    return out


def first_diff(got, want):
    n = min(len(got), len(want))
    if got[:n] == want[:n]:
        return n  # one is a prefix of the other: a short (or long) read
    lo, hi = 0, n  # the first differing byte is in [lo, hi)
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        if got[lo:mid] != want[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if got[i] != want[i]:
            return i
    return n


def looks_like(got, at, model, pristine):
    """What the bytes of a bad read look like from absolute offset `at` on:
    the model (right), the datastore's bytes (a lost write, or a session that
    leaked into a reset), zeros (a lost write, a phantom hole), or none."""
    n = 64
    piece = bytes(got[:n])
    if piece == bytes(model[at:at + len(piece)]):
        return "the model"
    if piece == bytes(pristine[at:at + len(piece)]):
        return "the datastore's bytes"
    if piece == bytes(len(piece)):
        return "zeros"
    return f"none of model, datastore, zero ({piece[:16].hex()}...)"


class Soak:
    """What all threads share: the clock, the stop flag, findings and counts."""

    def __init__(self, ws, agent, desktops, templates, seconds):
        self.ws, self.agent = ws, agent
        self.desktops, self.templates = desktops, templates
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.wrong = []       # wrong bytes served
        self.unexpected = []  # errors the product should not return
        self.notes = []       # allowed outcomes worth a line in the report
        self.stale_stats = []  # (desktop, session, last op, size): stat after close
        self.seen = collections.Counter()  # outcomes: enospc, reset refusals, ...

    def time_left(self):
        return time.monotonic() < self.deadline

    def elapsed(self):
        return time.monotonic() - self.start

    def finding(self, kind, text):
        with self.lock:
            (self.wrong if kind == "wrong" else self.unexpected).append(
                f"[t={self.elapsed():.1f}s] {text}")
            if len(self.wrong) + len(self.unexpected) >= MAX_FINDINGS:
                self.stop.set()

    def note(self, what, text=None):
        with self.lock:
            self.seen[what] += 1
            if text and len(self.notes) < 50:
                self.notes.append(f"[t={self.elapsed():.1f}s] {text}")


class Worker(threading.Thread):
    """Base of the load threads: seeded generator, op counts, the op in
    progress (for a hang report)."""

    def __init__(self, soak, name, seed):
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.rnd = random.Random(seed)
        self.counts = collections.Counter()
        self.ops = 0
        self.verified = 0  # bytes compared
        self.current = ("starting", time.monotonic())
        self.crashed = None

    def doing(self, what):
        self.current = (what, time.monotonic())

    def run(self):
        try:
            self.body()
        except BaseException as e:  # a bug of the test itself, or of the product
            import traceback

            self.crashed = traceback.format_exc()
            self.soak.finding("unexpected", f"{self.name} died: {e!r}\n{self.crashed}")
        finally:
            self.doing("finished")

    def body(self):
        raise NotImplementedError


class DesktopWorker(Worker):
    def __init__(self, soak, index, rel, how, pristine, seed):
        super().__init__(soak, f"desktop-{index}", seed)
        self.index, self.rel, self.how = index, rel, how
        self.path = soak.ws.mnt(rel)
        self.pristine = pristine
        self.model = gcrig.DiskModel()
        self.fd = -1
        self.direct = False
        self.sessions = 0
        self.session_ops = 0
        self.session_written = 0
        self.long_session = False
        self.long_done = index not in LONG_FIRST_SESSION
        self.last_write = None  # (off, len) of the latest write in this session
        self.prev_session_writes = []  # ranges written by the session before
        self.session_writes = []
        self.history = collections.deque(maxlen=24)
        self.buf = mmap.mmap(-1, MAX_IO)  # page aligned, for O_DIRECT
        self.view = memoryview(self.buf)

    # -- reporting --

    def where(self):
        return (f"{self.rel} ({self.how}) session {self.sessions} "
                f"({'O_DIRECT' if self.direct else 'buffered'}) op {self.session_ops}")

    def recent(self):
        return "\n      ".join(self.history)

    def check(self, got, off, length, what):
        """Compares a read of `length` at `off` with the model. False (and a
        finding) if it differs."""
        want = self.model[off:off + length] if off < len(self.model) else b""
        self.verified += len(got)
        if got == want:
            return True
        i = first_diff(got, want)
        at = off + i
        if i >= len(got) or i >= len(want):
            detail = (f"got {len(got)} bytes, the model has {len(want)} "
                      f"(size {len(self.model)})")
        else:
            pristine = self.pristine[at] if at < len(self.pristine) else None
            detail = (f"byte {at} is {got[i]:#04x}; model {want[i]:#04x}, datastore "
                      f"{'past its end' if pristine is None else f'{pristine:#04x}'}; "
                      "from there it looks like "
                      f"{looks_like(got[i:], at, self.model, self.pristine)}")
        self.soak.finding(
            "wrong", f"{self.where()}: {what} [{off}, +{length}): {detail}\n"
                     f"      recent ops (oldest first):\n      {self.recent()}")
        return False

    def failed(self, e, what, allowed=()):
        """An OSError of an op. ENOSPC (and any other errno in `allowed`) is
        the product's answer when the local disk budget is full: the op must
        have changed nothing. Anything else is a finding; the session then
        starts over (its state is unknown)."""
        if e.errno in allowed:
            self.soak.note(errno.errorcode.get(e.errno, str(e.errno)),
                           f"{self.where()}: {what}: {e.strerror}")
            self.counts[f"{what.split()[0]}_{errno.errorcode.get(e.errno, e.errno)}"] += 1
            return False
        self.soak.finding("unexpected", f"{self.where()}: {what}: {e!r}\n"
                                        f"      recent ops (oldest first):\n      {self.recent()}")
        return True

    # -- sessions --

    def open_session(self, after):
        """Opens the desktop right after the last close (or a reset) and
        checks it is pristine: size, and the ranges the session before wrote."""
        self.sessions += 1
        self.session_ops = 0
        self.session_written = 0
        self.direct = self.rnd.random() < 0.5
        if self.sessions == 1:
            self.long_session = not self.long_done
        else:
            self.long_session = self.rnd.random() < LONG_SESSION_SHARE
        self.prev_session_writes = self.session_writes[-8:]
        self.session_writes = []
        self.last_write = None
        self.model = gcrig.DiskModel(self.pristine)
        self.history.append(f"open #{self.sessions} {'O_DIRECT' if self.direct else 'buffered'}"
                            f"{' long' if self.long_session else ''} after {after}")
        self.doing(f"open after {after}")
        flags = os.O_RDWR | (os.O_DIRECT if self.direct else 0)
        self.fd = os.open(self.path, flags)
        self.doing("fstat after open")
        size = os.fstat(self.fd).st_size
        if size != len(self.pristine):
            self.soak.finding("wrong", f"{self.where()}: opened after {after}: size {size}, "
                                       f"the datastore's {len(self.pristine)}\n"
                                       f"      recent ops:\n      {self.recent()}")
            self.model = gcrig.DiskModel(size)  # unknown; the next close starts over
            return False
        # What the session before wrote must be gone: read it back first.
        ok = True
        for off, length in self.prev_session_writes[-3:] + [(0, PAGE)]:
            off, length = self.align(off, length) if self.direct else (off, length)
            length = min(length, MAX_IO)
            got = self.read(off, length, f"pristine after {after}")
            ok = self.check(got, off, length, f"first read after {after}") and ok
        self.counts["pristine_checks"] += 1
        return ok

    def close_session(self):
        self.doing("close")
        fd, self.fd = self.fd, -1
        self.history.append("close")
        os.close(fd)

    def stat_after_close(self):
        """stat(2) by path right after the last close: the VM is gone, so the
        datastore's size again (test_desktop_reset_pristine asks the same of
        one close). Kept apart from the findings that stop the run: it says
        nothing about bytes, and the soak goes on to look for those."""
        self.doing("stat after close")
        size = os.stat(self.path).st_size
        self.counts["stat_after_close"] += 1
        if size != len(self.pristine):
            before = self.history[-2].split()[0] if len(self.history) > 1 else "?"
            with self.soak.lock:
                self.soak.stale_stats.append((self.rel, self.sessions, before, size))

    def reset_closed(self):
        """`goldcache reset` of the closed desktop. Refused with "is open" when
        it overtakes the kernel's RELEASE, "has no overlay" once the overlay
        was discarded at the last close; a success is allowed too."""
        self.doing("goldcache reset (closed)")
        r = self.soak.agent.cli("reset", self.path, check=False)
        if r.returncode == 0:
            outcome = "reset_closed_done"
        elif r.returncode == 1 and "is open" in r.stderr:
            outcome = "reset_closed_refused_open"
        elif r.returncode == 1 and "has no overlay" in r.stderr:
            outcome = "reset_closed_no_overlay"
        else:
            self.soak.finding("unexpected", f"{self.rel}: goldcache reset of the closed desktop "
                                            f"exited {r.returncode}: {r.stderr.strip()}")
            return
        self.soak.note(outcome)
        self.counts["reset_closed"] += 1

    # -- IO helpers --

    def align(self, off, length):
        off = off // PAGE * PAGE
        length = max(PAGE, (length + PAGE - 1) // PAGE * PAGE)
        return off, length

    def read(self, off, length, what):
        self.doing(f"pread [{off}, +{length}) {what}")
        if self.direct:
            n = os.preadv(self.fd, [self.view[:length]], off)
            return bytes(self.view[:n])
        return os.pread(self.fd, length, off)

    def io_length(self):
        r = self.rnd.random()
        if self.direct:
            pages = (self.rnd.randint(1, 4) if r < 0.45 else
                     self.rnd.randint(5, 64) if r < 0.85 else self.rnd.randint(65, MAX_IO // PAGE))
            return pages * PAGE
        return (self.rnd.randint(1, 4 * KiB) if r < 0.4 else
                self.rnd.randint(4 * KiB + 1, 128 * KiB) if r < 0.85 else
                self.rnd.randint(128 * KiB + 1, MAX_IO))

    def offset_for(self, length, limit):
        """An offset for `length` bytes ending at most at `limit`."""
        hi = max(0, limit - length)
        r = self.rnd.random()
        if r < 0.15:  # around the end of the file
            size = len(self.model)
            off = self.rnd.randint(max(0, size - length), max(0, min(hi, size)))
        elif r < 0.35 and self.last_write:  # over the latest write
            lo = max(0, self.last_write[0] - length // 2)
            off = self.rnd.randint(min(lo, hi), min(hi, self.last_write[0] + self.last_write[1]))
        else:
            off = self.rnd.randint(0, hi)
        if self.direct:
            off = off // PAGE * PAGE
        return off

    # -- operations --

    def op_write(self):
        length = self.io_length()
        # Writes may extend the file (up to MAX_SIZE), starting at most a
        # little past its end.
        limit = min(MAX_SIZE, len(self.model) + 256 * KiB)
        length = min(length, limit)
        if self.direct:
            length = max(PAGE, length // PAGE * PAGE)
        off = self.offset_for(length, limit)
        data = self.rnd.randbytes(length)
        self.history.append(f"write [{off}, +{length})")
        self.doing(f"pwrite [{off}, +{length})")
        try:
            if self.direct:
                self.buf[:length] = data
                n = os.pwritev(self.fd, [self.view[:length]], off)
            else:
                n = os.pwrite(self.fd, data, off)
        except OSError as e:
            return self.failed(e, f"write [{off}, +{length})", allowed=(errno.ENOSPC,))
        if n != length:
            # A write cut short (the budget ran out halfway): what it says it
            # wrote is written.
            self.soak.note("short_write", f"{self.where()}: write [{off}, +{length}) wrote {n}")
            self.counts["write_short"] += 1
        self.model.write(off, data[:n])
        self.last_write = (off, n)
        self.session_writes.append((off, n))
        self.session_written += n
        self.counts["write_direct" if self.direct else "write_buffered"] += 1
        return False

    def op_read(self):
        length = self.io_length()
        limit = len(self.model) + 64 * KiB  # reads may cross the end of the file
        off = self.offset_for(length, limit)
        self.history.append(f"read [{off}, +{length})")
        try:
            got = self.read(off, length, "")
        except OSError as e:
            return self.failed(e, f"read [{off}, +{length})")
        self.counts["read_direct" if self.direct else "read_buffered"] += 1
        return not self.check(got, off, length, "read")

    def op_read_all(self):
        self.history.append("read all")
        off, size = 0, len(self.model)
        try:
            while True:
                got = self.read(off, MAX_IO, "(whole file)")
                if not self.check(got, off, MAX_IO, "whole-file read"):
                    return True
                if len(got) < MAX_IO:
                    break
                off += len(got)
        except OSError as e:
            return self.failed(e, f"read all at {off} (size {size})")
        self.counts["read_all"] += 1
        return False

    def op_truncate(self):
        size = self.rnd.randint(MIN_SIZE, MAX_SIZE)
        if self.direct:
            size = size // PAGE * PAGE
        kind = "shrink" if size < len(self.model) else "extend"
        self.history.append(f"ftruncate {size} ({kind} from {len(self.model)})")
        self.doing(f"ftruncate {size}")
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            return self.failed(e, f"ftruncate {size}", allowed=(errno.ENOSPC,))
        self.model.truncate(size)
        self.doing("fstat after ftruncate")
        st = os.fstat(self.fd).st_size
        if st != size:
            self.soak.finding("wrong", f"{self.where()}: fstat after ftruncate {size}: {st}")
            return True
        self.counts[f"truncate_{kind}"] += 1
        return False

    def op_sync(self):
        data_only = self.rnd.random() < 0.5
        self.history.append("fdatasync" if data_only else "fsync")
        self.doing("fdatasync" if data_only else "fsync")
        try:
            (os.fdatasync if data_only else os.fsync)(self.fd)
        except OSError as e:
            return self.failed(e, "fdatasync" if data_only else "fsync")
        self.counts["fdatasync" if data_only else "fsync"] += 1
        return False

    def op_fallocate(self):
        # The agent implements all three (roles/desktops.cc): an EOPNOTSUPP
        # here is a regression, not a reason to skip.
        kind = self.rnd.choices(["punch", "zero", "zero_extend", "allocate"], [8, 5, 1, 1])[0]
        size = len(self.model)
        length = self.rnd.randint(1, 2 * MiB)
        if kind in ("zero_extend", "allocate"):
            off = self.rnd.randint(max(0, size - MiB), size)
            length = min(length, max(1, MAX_SIZE - off))
        else:
            off = self.rnd.randint(0, max(0, size - 1))
        if self.direct:
            off, length = self.align(off, length)
            if kind in ("zero_extend", "allocate") and off + length > MAX_SIZE:
                length = max(PAGE, (MAX_SIZE - off) // PAGE * PAGE)
        mode = {"punch": gcrig.FALLOC_FL_PUNCH_HOLE | gcrig.FALLOC_FL_KEEP_SIZE,
                "zero": gcrig.FALLOC_FL_ZERO_RANGE | gcrig.FALLOC_FL_KEEP_SIZE,
                "zero_extend": gcrig.FALLOC_FL_ZERO_RANGE,
                "allocate": 0}[kind]
        self.history.append(f"fallocate {kind} [{off}, +{length})")
        self.doing(f"fallocate {kind} [{off}, +{length})")
        try:
            gcrig.fallocate(self.fd, mode, off, length)
        except OSError as e:
            return self.failed(e, f"fallocate {kind} [{off}, +{length})", allowed=(errno.ENOSPC,))
        if kind in ("punch", "zero"):
            self.model.zero(off, length)
        elif kind == "zero_extend":
            if off + length > len(self.model):
                self.model.truncate(off + length)
            self.model.zero(off, length)
        elif off + length > len(self.model):
            self.model.truncate(off + length)
        self.last_write = (off, length)
        self.counts[f"fallocate_{kind}"] += 1
        return False

    def op_reset_force(self):
        """`goldcache reset --force` of the open desktop: from now on its
        handles read the pristine datastore file (size included)."""
        self.history.append("goldcache reset --force (open)")
        self.doing("goldcache reset --force")
        r = self.soak.agent.cli("reset", "--force", self.path, check=False)
        if r.returncode != 0:
            self.soak.finding("unexpected", f"{self.where()}: goldcache reset --force of the open "
                                            f"desktop exited {r.returncode}: {r.stderr.strip()}")
            return True
        self.model = gcrig.DiskModel(self.pristine)
        self.session_writes = []
        self.last_write = None
        self.doing("fstat after reset --force")
        size = os.fstat(self.fd).st_size
        if size != len(self.pristine):
            self.soak.finding("wrong", f"{self.where()}: fstat after reset --force: {size}, the "
                                       f"datastore's {len(self.pristine)}\n      recent ops:\n"
                                       f"      {self.recent()}")
            return True
        self.counts["reset_force"] += 1
        return False

    OPS = [("write", 36), ("read", 40), ("read_all", 1), ("truncate", 3), ("sync", 3),
           ("fallocate", 5)]

    def busy(self):
        """Still at work: the run's time is not up, or this worker has not
        done its minimum yet (its ops, its forced long session)."""
        return self.soak.time_left() or self.ops < MIN_DESKTOP_OPS or not self.long_done

    def body(self):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        after = "agent start"
        while not self.soak.stop.is_set():
            try:
                restart = not self.open_session(after)
            except OSError as e:
                self.failed(e, f"open after {after}")
                if self.fd < 0:
                    after = "a failed open"
                    continue
                restart = True
            while not restart and not self.soak.stop.is_set():
                if self.long_session and self.session_written >= LONG_SESSION_BYTES:
                    self.long_session = False
                    self.long_done = True
                if not self.busy():
                    break
                if not self.long_session and self.rnd.random() < 1 / MEAN_SESSION_OPS:
                    break
                if self.rnd.random() < RESET_FORCE_PER_OP:
                    kind = "reset_force"
                else:
                    # Long sessions mostly write.
                    kind = ("write" if self.long_session and self.rnd.random() < 0.5
                            else self.rnd.choices(names, weights)[0])
                self.session_ops += 1
                self.ops += 1
                try:
                    restart = getattr(self, "op_" + kind)()
                except OSError as e:
                    restart = self.failed(e, kind)
            try:
                self.close_session()
            except OSError as e:
                self.failed(e, "close")
            self.counts["close"] += 1
            if not self.busy():
                break
            try:
                self.stat_after_close()
                if self.rnd.random() < RESET_CLOSED_SHARE:
                    self.reset_closed()
                    after = "close + goldcache reset"
                else:
                    after = "close"
            except OSError as e:
                self.failed(e, "after close")
                after = "close"
        self.buf_close()

    def buf_close(self):
        self.view.release()
        self.buf.close()


class TemplateReader(Worker):
    """Random O_DIRECT reads of both templates, every byte checked."""

    def body(self):
        readers = {rel: gcrig.DirectReader(self.soak.ws.mnt(rel), MAX_IO)
                   for rel in self.soak.templates}
        try:
            rels = sorted(readers)
            while not self.soak.stop.is_set() and (self.soak.time_left()
                                                   or self.ops < MIN_TEMPLATE_READS):
                rel = self.rnd.choice(rels)
                length = PAGE * (self.rnd.randint(1, 16) if self.rnd.random() < 0.6
                                 else self.rnd.randint(17, MAX_IO // PAGE))
                off = self.rnd.randrange(0, TEMPLATE_SIZE - length + 1, PAGE)
                self.doing(f"pread {rel} [{off}, +{length})")
                try:
                    got = readers[rel].pread(off, length)
                except OSError as e:
                    self.soak.finding("unexpected",
                                      f"{self.name}: {rel} read [{off}, +{length}): {e!r}")
                    continue
                self.ops += 1
                self.counts["template_read"] += 1
                want = self.soak.templates[rel][off:off + length]
                self.verified += len(got)
                if got != want:
                    i = first_diff(got, want)
                    piece = bytes(got[i:i + 64])
                    what = ("short" if i >= len(got) else
                            f"byte {off + i} is {got[i]:#04x}, the template's {want[i]:#04x}; "
                            f"looks like {'zeros' if piece == bytes(len(piece)) else 'other data'}")
                    self.soak.finding("wrong", f"{self.name}: {rel} [{off}, +{length}): {what}")
        finally:
            for r in readers.values():
                r.close()


class Operator(Worker):
    """`goldcache` commands and /metrics scrapes beside the load. Every kind
    of action runs at least once, then a random one every 0.1-0.6 s (pacing
    only: nothing waits on it)."""

    ACTIONS = ["evict_template", "evict_desktop", "warm", "warm_pin", "check", "stats", "list",
               "status", "metrics"]

    def __init__(self, soak, seed):
        super().__init__(soak, "operator", seed)
        self.max_log = 0.0
        self.max_disk = 0.0
        self.min_capacity = float("inf")
        self.max_evictions = 0.0

    def cli(self, *args):
        r = self.soak.agent.cli(*args, check=False)
        if r.returncode != 0:
            self.soak.finding("unexpected", f"operator: goldcache {' '.join(args)} exited "
                                            f"{r.returncode}: {r.stderr.strip()}")
            return None
        return r.stdout

    def act(self, action):
        mnt = self.soak.ws.mnt
        if action == "evict_template":
            self.cli("evict", mnt(self.rnd.choice(sorted(self.soak.templates))))
        elif action == "evict_desktop":
            # A desktop's datastore file is cached like a template: dropping
            # its chunks under its running session must not change a byte.
            self.cli("evict", mnt(f"pool/d{self.rnd.randrange(DESKTOPS)}.img"))
        elif action in ("warm", "warm_pin"):
            args = ["warm", mnt(self.rnd.choice(sorted(self.soak.templates)))]
            self.cli(*(args + (["--pin"] if action == "warm_pin" else [])))
        elif action == "check":
            out = self.cli("--json", "check")
            if out is not None:
                bad = json.loads(out)["bad_chunks_dropped"]
                if bad:
                    self.soak.finding("unexpected", f"operator: goldcache check dropped {bad} bad "
                                                    f"chunks")
        elif action == "stats":
            out = self.cli("--json", "stats")
            if out is not None:
                json.loads(out)
        elif action == "list":
            out = self.cli("--json", "list")
            if out is not None:
                for d in json.loads(out)["desktops"]:
                    if d["open_handles"] < 0:
                        self.soak.finding("unexpected", f"operator: goldcache list: {d}")
        elif action == "status":
            self.cli("status")
        else:
            m = self.soak.agent.metrics()
            if gcrig.datastore_writes(m) != gcrig.NO_DATASTORE_WRITES:
                self.soak.finding("unexpected", f"the agent wrote to the datastore: "
                                                f"{gcrig.datastore_writes(m)}")
            self.max_log = max(self.max_log, m.value("goldcache_overlay_log_bytes"))
            self.max_disk = max(self.max_disk, m.value("goldcache_overlay_bytes", tier="disk"))
            self.min_capacity = min(self.min_capacity, m.value("goldcache_cache_capacity_bytes"))
            self.max_evictions = max(self.max_evictions, m.value("goldcache_cache_evictions_total"))

    def body(self):
        todo = list(self.ACTIONS)
        self.rnd.shuffle(todo)
        while not self.soak.stop.is_set() and (self.soak.time_left() or todo):
            action = todo.pop() if todo else self.rnd.choice(self.ACTIONS)
            self.doing(action)
            try:
                self.act(action)
            except OSError as e:
                self.soak.finding("unexpected", f"operator: {action}: {e!r}")
            self.ops += 1
            self.counts[action] += 1
            self.doing("pacing")
            self.soak.stop.wait(self.rnd.uniform(0.1, 0.6))


def agent_log_errors(path):
    """Lines the agent logged at level error or critical."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip() for line in f
                if len(line.split(" ", 2)) > 2 and line.split(" ", 2)[1] in ("error", "critical")]


def test_soak_sixteen_desktops_two_templates_against_a_model(ws):
    templates = {rel: gcrig.random_bytes(TEMPLATE_SIZE, seed) for rel, seed in TEMPLATES.items()}
    for rel, data in templates.items():
        gcrig.write_file(ws.ds(rel), data)
    desktops = desktop_layout(templates)
    for rel, (_, data) in desktops.items():
        gcrig.write_file(ws.ds(rel), data)
    ds_before = gcrig.tree_snapshot(ws.datastore)

    agent = ws.agent(cache_size=CACHE_SIZE,
                     extra_args=["--overlay-ram", OVERLAY_RAM,
                                 "--overlay-ram-host", OVERLAY_RAM_HOST])
    agent.start()
    print(f"\nsoak: {SECONDS:.0f} s, seed {SEED} (GOLDCACHE_SOAK_SEED), {DESKTOPS} desktops, "
          f"{len(templates)} templates, agent log {agent.log_path}")

    soak = Soak(ws, agent, desktops, templates, SECONDS)
    workers = [DesktopWorker(soak, i, rel, how, data, SEED * 1000 + i)
               for i, (rel, (how, data)) in enumerate(desktops.items())]
    readers = [TemplateReader(soak, f"template-reader-{i}", SEED * 1000 + 100 + i)
               for i in range(2)]
    operator = Operator(soak, SEED * 1000 + 200)
    threads = workers + readers + [operator]
    for t in threads:
        t.start()
    end = soak.deadline + JOIN_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    hung = [t for t in threads if t.is_alive()]
    soak.stop.set()
    assert not hung, f"threads still running {JOIN_TIMEOUT_S} s after the soak's end:\n" + \
        "\n".join(f"  {t.name}: in '{t.current[0]}' for {time.monotonic() - t.current[1]:.1f} s"
                  for t in hung)
    ran = soak.elapsed()

    # Each desktop opened right after its last close, and each template: the
    # datastore's bytes. Then every overlay must be gone.
    for rel, data in [(r, d) for r, (_, d) in desktops.items()] + list(templates.items()):
        got = gcrig.read_all_direct(ws.mnt(rel), MAX_SIZE if rel in desktops else TEMPLATE_SIZE)
        if got != data:
            at = first_diff(got, data)
            soak.finding("wrong", f"{rel} read after the soak: differs from the datastore at byte "
                                  f"{at} (got {len(got)} bytes of {len(data)})")
    gcrig.wait_until(lambda: not agent.desktops(), "every desktop's overlay is discarded")

    # Per worker, per kind of op, and the agent's books.
    total = collections.Counter()
    for t in threads:
        total.update(t.counts)
    verified = sum(t.verified for t in threads)
    sessions = sum(w.sessions for w in workers)
    for w in workers:
        print(f"  {w.rel:14} {w.how:9} {w.ops:6} ops {w.sessions:4} sessions "
              f"{w.verified / MiB:8.1f} MiB verified  "
              + " ".join(f"{k}={v}" for k, v in sorted(w.counts.items())))
    for t in readers + [operator]:
        print(f"  {t.name:24} {t.ops:6} ops {t.verified / MiB:8.1f} MiB verified  "
              + " ".join(f"{k}={v}" for k, v in sorted(t.counts.items())))
    if soak.notes:
        print("  allowed outcomes (first %d):\n    " % len(soak.notes) + "\n    ".join(soak.notes))
    m = agent.metrics()
    resets = m.value("goldcache_desktop_resets_total", reason="last_close")
    overlay = {
        "spilled": m.value("goldcache_overlay_spilled_bytes_total"),
        "appends": m.value("goldcache_overlay_appends_total"),
        "compacted": m.value("goldcache_overlay_compacted_bytes_total"),
        "reclaimed": m.value("goldcache_overlay_reclaimed_bytes_total"),
        "space_waits": m.value("goldcache_overlay_space_waits_total"),
        "enospc": m.value("goldcache_overlay_enospc_total"),
    }
    print(f"soak summary: {ran:.0f} s, seed {SEED}, {sum(t.ops for t in threads)} ops ("
          + ", ".join(f"{k} {v}" for k, v in sorted(total.items()))
          + f"), {sessions} desktop sessions, {verified / MiB:.0f} MiB verified; overlay "
          f"spilled {overlay['spilled'] / MiB:.0f} MiB in {overlay['appends']:.0f} appends, "
          f"compacted {overlay['compacted'] / MiB:.1f} MiB, reclaimed "
          f"{overlay['reclaimed'] / MiB:.0f} MiB, peak log {operator.max_log / MiB:.0f} MiB, "
          f"space waits {overlay['space_waits']:.0f}, ENOSPC {overlay['enospc']:.0f}; read cache "
          f"evictions {m.value('goldcache_cache_evictions_total'):.0f}, capacity down to "
          f"{operator.min_capacity / MiB:.0f} MiB, "
          f"hits {m.value('goldcache_cache_hits_total'):.0f}, "
          f"misses {m.value('goldcache_cache_misses_total'):.0f}; stale stats after close "
          f"{len(soak.stale_stats)} of {total['stat_after_close']}")

    assert not soak.wrong, f"{len(soak.wrong)} wrong reads (seed {SEED}):\n" + "\n".join(soak.wrong)
    assert not soak.unexpected, (f"{len(soak.unexpected)} unexpected errors (seed {SEED}):\n"
                                 + "\n".join(soak.unexpected))

    # The floors: every thread did its minimum (none died early), and every
    # kind of op ran.
    for w in workers:
        assert w.ops >= MIN_DESKTOP_OPS and w.sessions >= 2, \
            f"{w.rel}: only {w.ops} ops in {w.sessions} sessions"
    for r in readers:
        assert r.ops >= MIN_TEMPLATE_READS, f"{r.name}: only {r.ops} reads"
    assert all(operator.counts[a] for a in Operator.ACTIONS), operator.counts
    for kind in ("write_direct", "write_buffered", "read_direct", "read_buffered", "read_all",
                 "truncate_shrink", "truncate_extend", "fsync", "fdatasync", "fallocate_punch",
                 "fallocate_zero", "fallocate_zero_extend", "fallocate_allocate", "reset_force",
                 "reset_closed", "close", "pristine_checks", "stat_after_close"):
        assert total[kind] > 0, f"no {kind} in the whole soak: {dict(total)}"

    # The agent's own books: the disk tier was used and compacted, every
    # overlay went at its last close (one per session: no reopen joined the
    # session before), nothing is left, nothing failed, nothing was written
    # to the datastore.
    assert overlay["spilled"] > 0 and overlay["appends"] > 0, \
        f"the disk tier was never used: {overlay}"
    assert overlay["compacted"] > 0, f"no disk-tier segment was compacted: {overlay}"
    seen_nospace = soak.seen["ENOSPC"] + soak.seen["short_write"]
    assert (overlay["enospc"] > 0) == (seen_nospace > 0), \
        f"ENOSPC: the agent counted {overlay['enospc']:.0f}, the desktops saw {seen_nospace}"
    assert m.value("goldcache_cache_evictions_total") > 0
    assert resets == sessions + len(desktops), \
        (f"{resets:.0f} overlays discarded at a last close, for {sessions} sessions and "
         f"{len(desktops)} final opens")
    for tier in ("ram", "disk"):
        assert m.value("goldcache_overlay_bytes", tier=tier) == 0, f"overlay {tier} bytes left"
    assert m.value("goldcache_overlay_log_bytes") == 0, "disk-tier log bytes left"
    assert m.value("goldcache_cache_checksum_failures_total") == 0
    # The log first: its lines say what the counters below only count.
    logged = agent_log_errors(agent.log_path)
    assert not logged, f"the agent logged {len(logged)} errors:\n" + "\n".join(logged[:20])
    for kind in ("read", "local_store", "overlay_io"):
        assert m.value("goldcache_errors_total", default=0, kind=kind) == 0, f"errors {kind}"
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES

    assert agent.stop() == 0
    assert gcrig.tree_snapshot(ws.datastore) == ds_before, "the datastore tree changed"

    # Last, as it is about attributes, not bytes: a stat right after the last
    # close shows the datastore's size, as after a reset by command.
    if soak.stale_stats:
        by_op = collections.Counter(op for _, _, op, _ in soak.stale_stats)
        raise AssertionError(
            f"{len(soak.stale_stats)} of {total['stat_after_close']} stat(2) calls right after a "
            f"desktop's last close showed the closed session's size, not the datastore's "
            f"{DESKTOP_SIZE}; by the last op before the close: {dict(by_op.most_common())}; first: "
            + ", ".join(f"{rel} session {n} after {op}: {size}"
                        for rel, n, op, size in soak.stale_stats[:5]))
