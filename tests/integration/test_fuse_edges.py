"""FUSE edge cases through a real mount (issue 9): reads past the end, zero
lengths, offsets near 2^63, unaligned O_DIRECT, unlink and rename of open
files, odd names, truncate racing reads. Each answers as a local file system
would, and the agent serves on."""

import errno
import mmap
import os
import random
import threading

import pytest

import gcrig
from gcrig import KiB, MiB

BIG = (1 << 63) - 8192  # the largest 4 KiB-aligned offset with room for a block


def test_reads_past_the_end_and_zero_lengths(ws, make_template):
    t = make_template("templates/t.img", 4 * MiB, seed=131)
    gcrig.write_file(ws.ds("pool/d.img"), gcrig.random_bytes(MiB, 132))
    agent = ws.agent().start()
    fd = os.open(t.mnt_path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, t.size) == b""
        assert os.pread(fd, 4096, t.size - 100) == t.data[-100:]
        assert os.pread(fd, 4096, BIG) == b""
        assert os.pread(fd, 0, 0) == b""
    finally:
        os.close(fd)
    d = os.open(ws.mnt("pool/d.img"), os.O_RDWR)
    try:
        assert os.pwrite(d, b"", 12345) == 0
        assert os.fstat(d).st_size == MiB, "a zero-length write changed the size"
    finally:
        os.close(d)
    assert agent.running()


def test_a_desktop_written_near_two_to_the_63(ws):
    base = gcrig.random_bytes(MiB, 133)
    gcrig.write_file(ws.ds("pool/d.img"), base)
    agent = ws.agent().start()
    path = ws.mnt("pool/d.img")
    fd = os.open(path, os.O_RDWR)
    try:
        block = b"\xa5" * 4096
        assert os.pwrite(fd, block, BIG) == 4096
        assert os.fstat(fd).st_size == BIG + 4096
        assert os.pread(fd, 4096, BIG) == block
        assert os.pread(fd, 4096, BIG - 4096) == bytes(4096), "the hole before it is not zeros"
        assert os.pread(fd, 4096, 0) == base[:4096]
        with pytest.raises(OSError) as e:  # past the largest file size
            os.pwrite(fd, block, (1 << 63) - 1)
        assert e.value.errno in (errno.EFBIG, errno.EINVAL), e.value
        os.ftruncate(fd, MiB)
        assert os.fstat(fd).st_size == MiB
        assert os.pread(fd, 4096, BIG) == b""
    finally:
        os.close(fd)
    assert agent.running()
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES


def test_unaligned_o_direct_reads_return_the_right_bytes(ws, make_template):
    t = make_template("templates/t.img", 4 * MiB, seed=134)
    ws.agent().start()
    fd = os.open(t.mnt_path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 2 * MiB)
    try:
        # FUSE passes unaligned O_DIRECT requests through (no block-size
        # rule of its own): every one is served, byte-exact, short only at EOF.
        for off, n in ((1, 4096), (4095, 8192), (MiB - 7, 3 * 4096), (t.size - 5, 4096)):
            got = os.preadv(fd, [memoryview(buf)[:n]], off)
            assert got == min(n, t.size - off), f"unaligned O_DIRECT read at {off}: {got} bytes"
            assert buf[:got] == t.data[off:off + n], f"unaligned O_DIRECT read at {off}"
    finally:
        buf.close()
        os.close(fd)


def test_open_files_outlive_their_unlink_and_rename(ws):
    os.makedirs(ws.ds("iso"), exist_ok=True)
    os.makedirs(ws.ds("pool"), exist_ok=True)
    gcrig.write_file(ws.ds("iso/a.txt"), b"passthrough")
    ws.agent().start()
    # Passthrough: the datastore's own semantics.
    fd = os.open(ws.mnt("iso/a.txt"), os.O_RDONLY)
    try:
        os.rename(ws.mnt("iso/a.txt"), ws.mnt("iso/b.txt"))
        assert os.pread(fd, 100, 0) == b"passthrough"
        os.unlink(ws.mnt("iso/b.txt"))
        assert os.pread(fd, 100, 0) == b"passthrough"
    finally:
        os.close(fd)
    assert not os.path.exists(ws.ds("iso/b.txt"))
    # A host-only file in a nonpersistent area.
    p = ws.mnt("pool/scratch.bin")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"host only", 0)
        os.rename(p, ws.mnt("pool/renamed.bin"))
        os.unlink(ws.mnt("pool/renamed.bin"))
        assert os.pread(fd, 100, 0) == b"host only"
        os.pwrite(fd, b"HOST", 0)
        assert os.pread(fd, 100, 0) == b"HOST only"
    finally:
        os.close(fd)
    assert not os.path.exists(ws.mnt("pool/renamed.bin"))


@pytest.mark.parametrize("name", ["with space", "new\nline", "ünïcødé-名前", "x" * 255,
                                  "-dash", ".hidden", "tab\tname"])
def test_odd_names_in_a_passthrough_area(ws, name):
    os.makedirs(ws.ds("iso"), exist_ok=True)
    ws.agent().start()
    p = ws.mnt(os.path.join("iso", name))
    with open(p, "wb") as f:
        f.write(b"odd")
    assert name in os.listdir(ws.mnt("iso"))
    assert os.stat(p).st_size == 3
    with open(ws.ds(os.path.join("iso", name)), "rb") as f:
        assert f.read() == b"odd"
    os.unlink(p)
    assert name not in os.listdir(ws.mnt("iso"))
    with pytest.raises(OSError) as e:
        open(ws.mnt(os.path.join("iso", "y" * 256)), "wb")
    assert e.value.errno == errno.ENAMETOOLONG


# ---------------------------------------------------------------------------
# Truncate racing reads (issue 9): a desktop truncated down and back up while
# readers read it.

RACE_SIZE = 8 * MiB
RACE_READERS = 4
RACE_ROUNDS = 16
RACE_READS_PER_STATE = 6  # every reader reads this often in each state (at least)
RACE_MAX_READ = 128 * KiB  # at most 32 pages: one FUSE request per O_DIRECT read
RACE_READ_SIZES = (4 * KiB, 16 * KiB, 64 * KiB, RACE_MAX_READ)


def _race_states(size, cuts):
    """Every state the desktop passes through in a round, as (file size,
    P below this offset, zeros from it to the file size): P whole, then per
    cut s the file truncated to s, then extended back to `size` (zeros from
    the smallest cut so far)."""
    states = [(size, size)]
    low = size
    for s in cuts:
        states.append((s, low))  # truncated: P below the earlier cuts, zeros to s
        low = min(low, s)
        states.append((size, low))  # extended again: zeros from the lowest cut
    return states


def _state_bytes(pattern, off, n, state):
    """What a read of n bytes at off returns in one state (short at its end)."""
    z, m = state
    end = max(off, min(off + n, z))
    p_end = min(end, max(off, m))
    return pattern[off:p_end] + bytes(end - p_end)


def _short_ok(off, n, k, sizes, direct):
    """Whether a read of n bytes at off may return k: all of them, or fewer
    where the file was shorter at some moment while it ran. Buffered, the
    kernel copies page by page and stops where it finds the file ending, so
    a read racing a cut stops at the cut or at any page boundary past it.
    O_DIRECT, the one FUSE request ends at a size the file had (or returns
    nothing at or past one); but when it comes back short and the kernel
    meanwhile knows a larger size again, generic_file_read_iter() reads the
    rest through the page cache, which stops as a buffered read does."""
    if k >= n:
        return k == n
    end = off + k
    if direct:
        return end in sizes or (end >= min(sizes) and end % (4 * KiB) == 0)
    return end >= min(sizes)


def _explain_race_read(got, off, n, pattern, low, sizes, others, direct=True):
    """Why a read is wrong: where it ended, the bytes that are neither P nor
    an allowed zero, and what they look like (the datastore's base, an
    earlier round's P)."""
    lines = []
    k = len(got)
    if not _short_ok(off, n, k, sizes, direct):
        lines.append(f"short: {k} of {n} bytes, ending at {off + k}, where the file never "
                     f"ended (sizes this round: {sorted(set(sizes))})")
    bad = [i for i in range(k)
           if got[i] != pattern[off + i] and not (got[i] == 0 and off + i >= low)]
    if bad:
        first, last = off + bad[0], off + bad[-1]
        seg = got[bad[0]:bad[-1] + 1]
        what = "other bytes"
        for name, data in others.items():
            if data[first:last + 1] == seg:
                what = f"the {name}"
        zeros_below = [off + i for i in bad if got[i] == 0]
        lines.append(f"{len(bad)} wrong byte(s) in [{first}, {last}] (0x{first:x}), e.g. at "
                     f"{first}: got {got[bad[0]]:#04x}, P has {pattern[first]:#04x}; they are "
                     f"{what}" + (f"; zeros below the lowest cut {low}, first at "
                                  f"{zeros_below[0]}" if zeros_below else ""))
    return "; ".join(lines)


def _pages_ok(got, off, pattern, low):
    """Fast path of the per-byte rule: below `low` exactly P; from `low` on
    each page is P or zeros (checked per byte where a page is neither)."""
    k = len(got)
    a = max(0, min(k, low - off))
    if got[:a] != pattern[off:off + a]:
        return False
    page = 4 * KiB
    i = a
    while i < k:
        j = min(k, (off + i) // page * page + page - off)
        piece = got[i:j]
        if piece != pattern[off + i:off + j] and piece.count(0) != len(piece):
            if any(c != pattern[off + i + x] and c != 0 for x, c in enumerate(piece)):
                return False
        i = j
    return True


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_truncate_racing_reads(ws, direct):
    """A nonpersistent desktop, open O_RDWR | O_DIRECT, gets a fresh random
    pattern P over all of it, then one thread ftruncate()s it down to s and
    back up to its full size (1 to 3 times, s random: 0, page-aligned or
    not) while reader threads pread it at random.

    What is guaranteed, for every read: each byte is P's, or 0 at an offset
    at or past the lowest cut s of the round (truncation drops bytes, the
    extension reads as zeros: never the datastore's base bytes, which the
    desktop's writes covered, never an earlier round's P); a read returns
    fewer bytes than asked only where the file was shorter at some moment
    while it ran, so a short read never ends below the lowest cut. After
    the race: [0, s) is P, [s, end) zeros, and the size is full again.

    O_DIRECT reads also see one state of the file whole (POSIX 2.9.7: read
    and ftruncate are atomic with respect to each other): P whole, or the
    file cut at s (short, ending at s; nothing at or past s), or extended
    again (zeros from the lowest cut). That holds because the kernel sends a
    page-aligned O_DIRECT read of at most 32 pages as one FUSE request (its
    only own answer is EOF at or past the size it knows, a size the file
    had), and goldcache answers a request from the overlay under its lock.
    One kernel detail: a direct read that comes back short while the kernel
    knows a larger size again is finished through the page cache
    (generic_file_read_iter); the bytes it adds lie past the cut, so they
    are the extended state's zeros, and a full-length read is still one
    state, while a short one is a prefix of one, stopping at a size or, as
    a buffered read does, at a page boundary past the lowest cut.

    Buffered reads are not atomic on Linux: the kernel copies page by page
    from the page cache (pages filled by readahead at different moments) and
    re-reads the size between pages, so a read racing a cut can stop at any
    page boundary past the cut, or mix P (copied before the cut) with zeros
    (after it). For them only the per-byte rule and "short only at or past
    the lowest cut" are asserted; both hold exactly, since the kernel drops
    the pages past a cut (waiting for pages being read) before ftruncate
    returns and zero-fills the tail of the page holding the cut.
    """
    rel = "pool/race.img"
    base = gcrig.random_bytes(RACE_SIZE, seed=141)
    gcrig.write_file(ws.ds(rel), base)
    agent = ws.agent().start()
    path = ws.mnt(rel)
    rnd = random.Random(142)
    problems = []
    earlier = {"datastore's base bytes": base}

    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    wbuf = mmap.mmap(-1, MiB)
    try:
        for round_ in range(RACE_ROUNDS):
            pattern = rnd.randbytes(RACE_SIZE)
            for off in range(0, RACE_SIZE, MiB):
                wbuf[:] = pattern[off:off + MiB]
                assert os.pwritev(fd, [memoryview(wbuf)], off) == MiB
            if round_ == 0:
                cuts = [0]
            elif round_ == 1:
                cuts = [RACE_SIZE // 2]
            else:
                cuts = [rnd.randrange(1, RACE_SIZE) for _ in range(rnd.randint(1, 3))]
            states = _race_states(RACE_SIZE, cuts)
            sizes = [z for z, _ in states]
            low = min(cuts)
            done = threading.Event()
            cond = threading.Condition()
            reads = [0] * RACE_READERS

            def progress(count_each):
                # Until every reader has read count_each more times; a reader
                # stuck in a read fails the test instead of hanging it.
                with cond:
                    want = [r + count_each for r in reads]
                    if not cond.wait_for(lambda: all(r >= w for r, w in zip(reads, want)),
                                         timeout=60):
                        problems.append(f"round {round_}: readers stalled at {reads}")
                        return False
                return True

            def truncator():
                try:
                    if not progress(RACE_READS_PER_STATE):
                        return
                    for s in cuts:
                        os.ftruncate(fd, s)
                        if not progress(RACE_READS_PER_STATE):
                            return
                        os.ftruncate(fd, RACE_SIZE)
                        if not progress(RACE_READS_PER_STATE):
                            return
                except OSError as e:
                    problems.append(f"round {round_}: ftruncate failed: {e!r}")
                finally:
                    done.set()

            def reader(idx):
                r = random.Random(round_ * 100 + idx)
                rfd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
                buf = mmap.mmap(-1, RACE_MAX_READ)
                view = memoryview(buf)
                try:
                    while not done.is_set():
                        off = r.randrange(RACE_SIZE // (4 * KiB)) * 4 * KiB
                        n = r.choice(RACE_READ_SIZES)
                        try:
                            if direct:
                                got = bytes(view[:os.preadv(rfd, [view[:n]], off)])
                            else:
                                got = os.pread(rfd, n, off)
                        except OSError as e:
                            problems.append(f"round {round_}: read at {off} of {n} bytes "
                                            f"failed: {e!r}")
                            got = None
                        if got is not None:
                            ok = _short_ok(off, n, len(got), sizes, direct)
                            if ok and direct:
                                # One state's answer (a short read: a prefix
                                # of one; see _short_ok).
                                ok = any(got == _state_bytes(pattern, off, n, st)[:len(got)]
                                         for st in states)
                            elif ok:
                                ok = _pages_ok(got, off, pattern, low)
                            if not ok:
                                why = _explain_race_read(got, off, n, pattern, low, sizes,
                                                         earlier, direct)
                                if direct and not why:
                                    why = ("every byte is P or an allowed zero, but the read "
                                           "is no single state of the file (torn across a "
                                           "truncation)")
                                problems.append(f"round {round_} (cuts {cuts}): read at {off} "
                                                f"of {n} bytes: {why}")
                        with cond:
                            reads[idx] += 1
                            cond.notify_all()
                finally:
                    view.release()
                    buf.close()
                    os.close(rfd)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(RACE_READERS)]
            threads.append(threading.Thread(target=truncator))
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads), f"round {round_}: a thread hangs"
            assert not problems, "\n".join(problems[:30]) + \
                (f"\n... and {len(problems) - 30} more" if len(problems) > 30 else "")

            # After the race: P below the lowest cut, zeros above, full size.
            assert os.fstat(fd).st_size == RACE_SIZE
            after = gcrig.read_all_direct(path, RACE_SIZE)
            want = pattern[:low] + bytes(RACE_SIZE - low)
            if after != want:
                at = gcrig.first_difference(after, want)
                pytest.fail(f"round {round_} (cuts {cuts}): after the race the desktop reads "
                            f"{len(after)} bytes, differing from P[:{low}] + zeros at {at}: "
                            + _explain_race_read(after[at:at + MiB], at, MiB, pattern, low,
                                                 [RACE_SIZE], earlier), pytrace=False)
            earlier[f"P of round {round_}"] = pattern
    finally:
        wbuf.close()
        os.close(fd)
    assert gcrig.wait_desktop_closed(agent, rel) is None
    gcrig.assert_same_content(gcrig.read_all_direct(path, RACE_SIZE), base,
                              "the desktop reopened after its reset")
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
    assert agent.running()
