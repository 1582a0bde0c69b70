"""Faults done to the datastore directory behind the agent's back, while
handles are open through the mount (posix datastore, the default rig).

An operator (or a provisioning script, or a backup restore) truncates,
extends, overwrites, unlinks or renames files on the NFS export itself, not
through goldcache, while desktops run. What goldcache promises (design.md §3
and §4.1, architecture.md "Generations and change"):

- a template's cache identity is its generation (size, mtime, ctime, inode);
  a handle opened before a change keeps its generation: cached chunks still
  serve, a miss that finds the file changed fails with EIO (or ESTALE), and
  bytes of two generations are never mixed, silently or otherwise;
- new opens get the new generation and read exactly the new content;
- a nonpersistent desktop's base is "immutable from our side, so it is cached
  exactly like a template": the same rule, under the desktop's own writes,
  which always read back; after the last close the overlay is gone and the
  next open reads the datastore file as it is now.

Where the documents say nothing, these tests expect what an operator would:
a held handle's fstat gives its generation's size (QEMU sizes its disk from
the descriptor), and an open file outlives its unlink on the datastore as
it does on a local or NFS file system (fstat answers, reads are its bytes
or EIO).

Every read is checked byte for byte against what it may return; a failure
lists the offsets, lengths and what the bytes were (zeros, EOF, the other
generation's, short) instead of a bare "differs".
"""

import errno
import os
import random

import pytest

import gcrig
from gcrig import KiB, MiB

SIZE = 32 * MiB
CACHED = 8 * MiB  # what the old handle caches before the fault: chunks 0..7
BLOCK = MiB
OK_ERRNOS = (errno.EIO, errno.ESTALE)


# ---------------------------------------------------------------------------
# Checking reads


def _what(got: bytes, off: int, others: dict) -> str:
    """What `got`, read at `off`, looks like: zeros, or one of `others`."""
    if not got:
        return "nothing (EOF)"
    if got.count(0) == len(got):
        return "all zeros"
    for name, data in others.items():
        if data[off:off + len(got)] == got:
            return f"the {name} bytes"
    return "other bytes"


def describe(got: bytes, want: bytes, off: int, others: dict) -> str:
    """One line saying how a read at `off` differs from `want`."""
    parts = [f"read at {off} (0x{off:x}) of {len(want)} bytes"]
    if len(got) < len(want):
        parts.append(f"short: {len(got)} bytes")
    elif len(got) > len(want):
        parts.append(f"long: {len(got)} bytes")
    d = gcrig.first_difference(got, want)
    if d is not None and d < min(len(got), len(want)):
        seg = got[d:]
        parts.append(f"first wrong byte at {off + d} (0x{off + d:x}): got {got[d]:#04x}, "
                     f"want {want[d]:#04x}; from there it is {_what(seg, off + d, others)}")
    parts.append(f"whole read is {_what(got, off, others)}")
    return "; ".join(parts)


class ReadLog:
    """Collects every wrong answer of a phase; fail() reports them all."""

    def __init__(self):
        self.problems: list[str] = []
        self.errors = 0  # reads that failed with an allowed errno
        self.reads = 0

    def bad(self, phase: str, line: str) -> None:
        self.problems.append(f"[{phase}] {line}")

    def fail_if_any(self, what: str) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:40])
            more = f"\n  ... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
            pytest.fail(f"{what}: {len(self.problems)} wrong read(s) of {self.reads}:"
                        f"\n  {shown}{more}", pytrace=False)


def old_handle_probes(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """(offset, length) of the reads an old handle makes: every BLOCK of its
    generation, plus 4 KiB reads on the edges (the cached part, the new size)."""
    probes = [(off, min(BLOCK, old_size - off)) for off in range(0, old_size, BLOCK)]
    for edge in (CACHED, new_size, old_size):
        for off in (edge - 4 * KiB, edge):
            if 0 <= off < old_size and off % (4 * KiB) == 0:
                probes.append((off, min(4 * KiB, old_size - off)))
    return probes


def check_old_handle(r: gcrig.DirectReader, old: bytes, new: bytes, phase: str, log: ReadLog,
                     cached_must_serve: bool = True) -> None:
    """Reads the whole old generation through the handle opened before the
    change. Each read returns exactly the old bytes (all of them: a range
    inside the old size is never short) or fails with EIO/ESTALE; reads of
    the part the handle cached before the change must keep serving
    (architecture.md: "cached chunks still serve")."""
    others = {"new generation's": new}
    for off, n in old_handle_probes(len(old), len(new)):
        want = old[off:off + n]
        log.reads += 1
        try:
            got = r.pread(off, n)
        except OSError as e:
            if e.errno not in OK_ERRNOS:
                log.bad(phase, f"read at {off} of {n} bytes failed with {e!r} "
                               f"(only EIO/ESTALE may say the generation is gone)")
            elif cached_must_serve and off + n <= CACHED:
                log.bad(phase, f"read at {off} of {n} bytes, cached before the change, "
                               f"failed with {e!r}")
            else:
                log.errors += 1
            continue
        if got != want:
            log.bad(phase, describe(got, want, off, others))


def wait_for_attrs(mnt_path: str, ds_path: str, timeout: float = 15.0) -> os.stat_result:
    """Polls stat through the mount until its size, mtime and inode number
    are the datastore file's (the kernel trusts attributes for about a
    second)."""
    ds = os.stat(ds_path)
    state = {}

    def same():
        st = os.stat(mnt_path)
        state["st"] = st
        return st if (st.st_size, st.st_mtime_ns, st.st_ino) == \
            (ds.st_size, ds.st_mtime_ns, ds.st_ino) else None

    try:
        return gcrig.wait_until(same, "the mount shows the datastore's size and mtime", timeout)
    except AssertionError:
        st = state.get("st")
        pytest.fail(f"{mnt_path}: the mount still shows size {st and st.st_size}, mtime "
                    f"{st and st.st_mtime_ns}, inode {st and st.st_ino} after {timeout:.0f} s; "
                    f"the datastore has size {ds.st_size}, mtime {ds.st_mtime_ns}, inode "
                    f"{ds.st_ino}", pytrace=False)


def read_whole(path: str, size_hint: int) -> tuple[bytes, int]:
    """A fresh open's view: (content read with O_DIRECT to EOF, fstat size)."""
    with gcrig.DirectReader(path) as r:
        size = os.fstat(r.fd).st_size
        out = bytearray()
        off = 0
        while True:
            chunk = r.pread(off, BLOCK)
            if not chunk:
                break
            out += chunk
            off += len(chunk)
            if off > size_hint + 4 * BLOCK:
                break  # never loop forever on a broken EOF
    return bytes(out), size


def read_buffered(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fresh_open_problems(path: str, want: bytes, others: dict) -> list[str]:
    """What is wrong with a new open of `path` that should read `want`
    (fstat size, O_DIRECT content, buffered content); [] if nothing."""
    out = []
    got, size = read_whole(path, len(want))
    if size != len(want):
        out.append(f"fstat of a new open says {size} bytes, the file has {len(want)}")
    if got != want:
        off = gcrig.first_difference(got, want)
        out.append(f"a new O_DIRECT open read {len(got)} bytes, the file has {len(want)}; "
                   f"first difference: "
                   + describe(got[off:off + BLOCK], want[off:off + BLOCK], off, others))
    got = read_buffered(path)
    if got != want:
        off = gcrig.first_difference(got, want)
        out.append(f"a new buffered open read {len(got)} bytes, the file has {len(want)}; "
                   f"first difference: "
                   + describe(got[off:off + BLOCK], want[off:off + BLOCK], off, others))
    return out


def assert_fresh_open_reads(path: str, want: bytes, what: str, others=None) -> None:
    problems = fresh_open_problems(path, want, others or {})
    if problems:
        pytest.fail(f"{what} ({path}):\n  " + "\n  ".join(problems), pytrace=False)


def check_fresh_open(path: str, want: bytes, phase: str, log: ReadLog, others=None) -> None:
    log.reads += 1
    for line in fresh_open_problems(path, want, others or {}):
        log.bad(phase, f"{os.path.basename(path)}: {line}")


def check_fstat(fd: int, size: int, phase: str, log: ReadLog) -> None:
    """fstat of a handle opened before the change: its generation's size
    (the size QEMU sees for its disk; lseek(SEEK_END) is the same answer)."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        log.bad(phase, f"fstat of the open handle failed with {e!r}")
        return
    if st.st_size != size:
        log.bad(phase, f"fstat of the open handle says {st.st_size} bytes; its generation has "
                       f"{size}")


def cache_first_part(r: gcrig.DirectReader, data: bytes) -> None:
    """Reads chunks 0..CACHED/BLOCK-1 through `r`, last first (a backward run
    gets no readahead), so exactly that part is cached and the rest is not."""
    for off in reversed(range(0, CACHED, BLOCK)):
        got = r.pread(off, BLOCK)
        assert got == data[off:off + BLOCK], f"before any fault: read at {off} is wrong"


def wait_cached_exactly(agent, rel: str, nbytes: int) -> None:
    agent.wait_metric("goldcache_template_cached_bytes", lambda v: v == nbytes, timeout=30,
                      template=rel)


# ---------------------------------------------------------------------------
# a. truncated or extended in place


def truncate_to_half(path: str, old: bytes) -> bytes:
    os.truncate(path, len(old) // 2)
    return old[:len(old) // 2]


def extend(path: str, old: bytes) -> bytes:
    grow = 8 * MiB + 12345
    os.truncate(path, len(old) + grow)
    return old + bytes(grow)


def cp_over(path: str, old: bytes) -> bytes:
    # `cp new.img templates/win11.img`: the same inode, O_TRUNC, then the new
    # bytes (another content, another size).
    new = gcrig.random_bytes(len(old) * 3 // 4 + 4321, seed=411)
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    return new


@pytest.mark.parametrize("change", [truncate_to_half, extend, cp_over],
                         ids=["truncate_half", "extend", "cp_over"])
def test_template_truncated_in_place_under_an_open_handle(ws, make_template, change):
    """os.truncate to half, os.truncate to longer, or `cp` over it (O_TRUNC
    and new bytes of another size), on the datastore, the inode kept, while
    a handle holds the template with chunks 0-7 cached and the rest not.
    The held handle reads every block of its generation: the old bytes,
    whole, or EIO/ESTALE (the cached part: the old bytes); never EOF, zeros,
    a short read or new bytes, before or after the mount learns the new
    size. New opens: the new size and exactly the new bytes."""
    t = make_template("templates/win11.img", SIZE, seed=401)
    other = make_template("templates/other.img", 4 * MiB, seed=402)
    agent = ws.agent().start()
    st_before = os.stat(t.ds_path)
    log = ReadLog()
    with gcrig.DirectReader(t.mnt_path) as old:
        cache_first_part(old, t.data)
        wait_cached_exactly(agent, t.rel, CACHED)

        new = change(t.ds_path, t.data)
        st = os.stat(t.ds_path)
        assert st.st_ino == st_before.st_ino and st.st_size == len(new)

        check_old_handle(old, t.data, new, "right after the change", log)
        wait_for_attrs(t.mnt_path, t.ds_path)
        check_old_handle(old, t.data, new, "after the mount shows the new size", log)
        check_fstat(old.fd, SIZE, "after the mount shows the new size", log)

        check_fresh_open(t.mnt_path, new, "a new open after the change", log,
                         {"old generation's": t.data})
        with gcrig.DirectReader(t.mnt_path) as fresh:
            assert os.fstat(fresh.fd).st_size == len(new)
            check_old_handle(old, t.data, new, "while a new generation's handle is open", log)
            for off in range(0, len(new), BLOCK):
                got = fresh.pread(off, BLOCK)
                if got != new[off:off + BLOCK]:
                    log.bad("new handle beside the old one",
                            describe(got, new[off:off + BLOCK], off, {"old generation's": t.data}))
        # The old handle lives on after all this: still its own bytes or EIO.
        check_old_handle(old, t.data, new, "after the new handle closed", log)
        log.fail_if_any(f"{change.__name__} of a template under an open handle")

    assert_fresh_open_reads(t.mnt_path, new, "after the old handle closed")
    assert_fresh_open_reads(other.mnt_path, other.data, "another template")
    m = agent.metrics()
    assert m.value("goldcache_template_generation_changes_total") >= 1, m
    assert m.value("goldcache_template_changed_while_open_total") >= 1, m
    # Every refused read of the old handle was counted as a stale generation.
    if log.errors:
        assert m.value("goldcache_errors_total", kind="stale_generation") >= 1, m
    assert agent.running()


# ---------------------------------------------------------------------------
# b. unlinked


def test_template_unlinked_under_an_open_handle(ws, make_template):
    t = make_template("templates/win11.img", SIZE, seed=421)
    other = make_template("templates/other.img", 4 * MiB, seed=422)
    agent = ws.agent().start()
    log = ReadLog()
    gone = bytes(SIZE)  # nothing else can be read; zeros would be a lie
    with gcrig.DirectReader(t.mnt_path) as old:
        cache_first_part(old, t.data)
        wait_cached_exactly(agent, t.rel, CACHED)

        os.unlink(t.ds_path)
        check_old_handle(old, t.data, gone, "right after the unlink", log)
        gcrig.wait_until(lambda: not os.path.exists(t.mnt_path), "the mount no longer shows it")
        for flags in (os.O_RDONLY, os.O_RDONLY | os.O_DIRECT):
            try:
                os.close(os.open(t.mnt_path, flags))
                log.bad("new open", f"open(flags {flags:#o}) of the unlinked name succeeded")
            except FileNotFoundError:
                pass
            except OSError as e:
                log.bad("new open", f"open(flags {flags:#o}) of the unlinked name failed with "
                                    f"{e!r}, not ENOENT")
        check_old_handle(old, t.data, gone, "after the mount shows it gone", log)
        # An open file outlives its unlink (as on a local or NFS file
        # system): fstat still answers, with its size.
        check_fstat(old.fd, SIZE, "after the mount shows it gone", log)
        check_fresh_open(other.mnt_path, other.data, "another template, while the unlinked "
                         "one is open", log)
        check_old_handle(old, t.data, gone, "after another template was read", log)
    log.fail_if_any("a template unlinked on the datastore under an open handle")

    assert "win11.img" not in os.listdir(ws.mnt("templates"))
    assert_fresh_open_reads(other.mnt_path, other.data, "another template")
    # A new file under the old name is a new file.
    again = gcrig.random_bytes(2 * MiB, seed=423)
    gcrig.write_file(t.ds_path, again)
    gcrig.wait_until(lambda: os.path.exists(t.mnt_path), "the mount shows the new file")
    assert_fresh_open_reads(t.mnt_path, again, "a new file under the unlinked name",
                            {"unlinked file's": t.data})
    assert agent.metrics().value("goldcache_template_changed_while_open_total") >= 1
    assert agent.running()


# ---------------------------------------------------------------------------
# c. renamed, and another file renamed over its old name


def test_template_renamed_under_an_open_handle(ws, make_template):
    """The usual way to roll out a patched template, done on the datastore
    while a desktop has the template open: `mv win11.img win11-old.img`,
    then the patched image renamed in as win11.img. Once stat through the
    mount shows the replacement, every new open of win11.img reads the
    replacement and every open of win11-old.img the old image, in whatever
    order they come (a boot storm opens both); the held handle reads its
    own bytes or fails."""
    t = make_template("templates/win11.img", SIZE, seed=431)
    agent = ws.agent().start()
    moved_ds = ws.ds("templates/win11-old.img")
    moved_mnt = ws.mnt("templates/win11-old.img")
    replacement = gcrig.random_bytes(SIZE - 3 * MiB + 777, seed=432)
    as_old = {"renamed (old) file's": t.data}
    as_new = {"replacement's": replacement}
    log = ReadLog()
    with gcrig.DirectReader(t.mnt_path) as old:
        cache_first_part(old, t.data)
        wait_cached_exactly(agent, t.rel, CACHED)

        os.rename(t.ds_path, moved_ds)
        check_old_handle(old, t.data, replacement, "right after the rename", log)
        gcrig.write_file(t.ds_path + ".tmp", replacement)
        os.replace(t.ds_path + ".tmp", t.ds_path)
        check_old_handle(old, t.data, replacement, "right after the replacement", log)
        wait_for_attrs(t.mnt_path, t.ds_path)
        check_old_handle(old, t.data, replacement, "after the mount shows the replacement", log)
        check_fstat(old.fd, SIZE, "after the mount shows the replacement", log)

        # Opens in the order a boot storm may make them.
        check_fresh_open(t.mnt_path, replacement, "1: the old name", log, as_old)
        check_fresh_open(moved_mnt, t.data, "2: the new name of the renamed file", log, as_new)
        check_fresh_open(t.mnt_path, replacement, "3: the old name again", log, as_old)
        check_fresh_open(moved_mnt, t.data, "4: the new name again", log, as_new)
        with gcrig.DirectReader(t.mnt_path) as fresh, gcrig.DirectReader(moved_mnt) as moved:
            check_old_handle(old, t.data, replacement,
                             "while the replacement and the renamed file are open", log)
            for name, r, want, others in (("5: the replacement, held open", fresh, replacement,
                                           as_old),
                                          ("5: the renamed file, held open", moved, t.data,
                                           as_new)):
                blocks = list(range(0, len(want), BLOCK))
                for off in random.Random(433).sample(blocks, len(blocks)):
                    n = min(BLOCK, len(want) - off)
                    log.reads += 1
                    got = r.pread(off, BLOCK)
                    if got != want[off:off + n]:
                        log.bad(name, describe(got, want[off:off + n], off, others))
    log.fail_if_any("rename of a template on the datastore under an open handle")

    assert_fresh_open_reads(t.mnt_path, replacement, "the old name, after every handle closed",
                            as_old)
    assert_fresh_open_reads(moved_mnt, t.data, "the renamed file, after every handle closed",
                            as_new)
    assert sorted(os.listdir(ws.mnt("templates"))) == ["win11-old.img", "win11.img"]
    m = agent.metrics()
    assert m.value("goldcache_template_generation_changes_total") >= 1, m
    assert agent.running()


# ---------------------------------------------------------------------------
# d. the datastore file under an open nonpersistent desktop


DESKTOP = "pool/x.img"
# The desktop's own writes before the fault: whole blocks in the cached part
# and beyond it, a block straddling the cached part's end, and small writes.
WRITES = [
    (1 * MiB, MiB),                  # a whole block, base cached
    (CACHED - 512 * KiB, MiB),       # straddles the end of the cached part
    (20 * MiB, MiB),                 # a whole block, base never read
    (24 * MiB + 8 * KiB, 64 * KiB),  # inside a block whose base was never read
    (SIZE - 4 * KiB, 4 * KiB),       # the last page
]


def ds_truncate(path, old):
    os.truncate(path, len(old) // 2)
    return old[:len(old) // 2]


def ds_replace(path, old):
    new = gcrig.random_bytes(len(old) + 3 * MiB, seed=451)
    gcrig.write_file(path + ".tmp", new)
    os.replace(path + ".tmp", path)
    return new


def ds_rewrite_in_place(path, old):
    new = gcrig.random_bytes(len(old), seed=452)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, new, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return new


def written_mask(size: int) -> bytearray:
    mask = bytearray(size)
    for off, n in WRITES:
        mask[off:off + n] = b"\x01" * n
    return mask


@pytest.mark.parametrize("change", [ds_truncate, ds_replace, ds_rewrite_in_place],
                         ids=["truncate", "replace", "rewrite_in_place"])
def test_desktop_base_changed_under_an_open_desktop(ws, change):
    """The product promises (design.md §3 "nonpersistent"): the desktop's base
    is "cached exactly like a template", so the template's generation rule
    holds under the overlay. Asserted, read by read, while the desktop is
    open after the fault:

    - its own writes read back, always (a read wholly inside them needs no
      base byte and must succeed);
    - every other byte a read returns is the old base's (the desktop's disk
      is the old base plus its writes: that is what the guest's file system
      was built on); a read that needs a base byte the agent no longer has
      may fail with EIO/ESTALE instead; never zeros, never the new base's
      bytes, never short (the desktop's size is its own: the old size);
    - after the last close and a new open: the new datastore file, exactly.
    """
    base = gcrig.random_bytes(SIZE, seed=441)
    gcrig.write_file(ws.ds(DESKTOP), base)
    agent = ws.agent().start()
    path = ws.mnt(DESKTOP)
    mine = gcrig.random_bytes(SIZE, seed=442)  # what the desktop writes, by offset
    expected = bytearray(base)
    for off, n in WRITES:
        expected[off:off + n] = mine[off:off + n]
    expected = bytes(expected)
    mask = written_mask(SIZE)
    log = ReadLog()

    with gcrig.DirectReader(path, writable=True) as d:
        for off in reversed(range(0, CACHED, BLOCK)):
            assert d.pread(off, BLOCK) == base[off:off + BLOCK], f"base read at {off}"
        for off, n in WRITES:
            d.pwrite(off, mine[off:off + n])
        assert d.pread(0, BLOCK) == expected[:BLOCK]

        new = change(ws.ds(DESKTOP), base)
        others = {"new base's": new, "old base's": base}

        def check(phase):
            probes = [(off, BLOCK) for off in range(0, SIZE, BLOCK)] + list(WRITES)
            for off, n in probes:
                want = expected[off:off + n]
                own_only = all(mask[off:off + n])
                log.reads += 1
                try:
                    got = d.pread(off, n)
                except OSError as e:
                    if own_only:
                        log.bad(phase, f"read at {off} of {n} bytes, all the desktop's own "
                                       f"writes, failed with {e!r}")
                    elif e.errno not in OK_ERRNOS:
                        log.bad(phase, f"read at {off} of {n} bytes failed with {e!r}")
                    elif off + n <= CACHED:
                        log.bad(phase, f"read at {off} of {n} bytes, base cached before the "
                                       f"change, failed with {e!r}")
                    else:
                        log.errors += 1
                    continue
                if got != want:
                    log.bad(phase, describe(got, want, off, others))
            st = os.fstat(d.fd)
            if st.st_size != SIZE:
                log.bad(phase, f"fstat of the open desktop says {st.st_size} bytes, its disk "
                               f"has {SIZE}")

        check("right after the change")
        # The desktop's attributes are its own while it is open: stat through
        # the mount keeps saying SIZE, whatever the datastore file's size.
        st_mnt = os.stat(path)
        if st_mnt.st_size != SIZE:
            log.bad("stat", f"stat through the mount says {st_mnt.st_size} while the desktop "
                            f"is open; its disk has {SIZE}")
        # A second handle joins the session: the same view.
        with gcrig.DirectReader(path, writable=True) as d2:
            for off in (0, 1 * MiB, 20 * MiB, SIZE - BLOCK):
                log.reads += 1
                try:
                    got = d2.pread(off, BLOCK)
                except OSError as e:
                    if e.errno not in OK_ERRNOS or all(mask[off:off + BLOCK]) or off < CACHED:
                        log.bad("second handle", f"read at {off} failed with {e!r}")
                    continue
                if got != expected[off:off + BLOCK]:
                    log.bad("second handle", describe(got, expected[off:off + BLOCK], off, others))
        check("after a second handle came and went")
        log.fail_if_any(f"{change.__name__}: the open desktop")

    d = gcrig.wait_desktop_closed(agent, DESKTOP)
    assert d is None, f"the desktop's overlay outlived its last close: {d}"
    assert_fresh_open_reads(path, new, "the desktop reopened after the change")
    # And its writes are gone with the overlay, everywhere.
    with open(ws.ds(DESKTOP), "rb") as f:
        assert f.read() == new, "the datastore file is not what the fault left"
    m = agent.metrics()
    assert gcrig.datastore_writes(m) == gcrig.NO_DATASTORE_WRITES
    assert m.value("goldcache_desktop_resets_total", reason="last_close") >= 1
    assert agent.running()
