"""A filer outage under a running desktop (docs/design.md §4, contract 6), over a real
NFS datastore: goldcached --datastore nfs://... --datastore-timeout 2s in front
of nfs-ganesha on loopback (tests/integration/nfsrig.py).

The desktop has read the first WARM bytes of its template and holds the file
open. Then the filer goes away, either dead (ganesha stopped: connections
reset, nothing listens) or hung (ganesha SIGSTOPped: connections stay up,
requests go unanswered). While it is away:
- cached chunks keep serving, on the held handle and through a new open;
- the first uncached read fails with EIO within the timeout plus MARGIN, and
  later ones at once; /metrics says the datastore is down, the log says why.
When the filer is back, the same uncached read succeeds with the right bytes,
from the same agent process, and /metrics says the datastore is up again.
"""

import errno
import time

import pytest

import gcrig
from gcrig import MiB

TEMPLATE = "templates/win11.img"
SIZE = 32 * MiB
WARM = 8 * MiB             # the desktop booted: this much of the template is cached
TIMEOUT_S = 2              # --datastore-timeout
MARGIN_S = 3               # scheduling on a busy 2-core box, FUSE round trips
RECOVERY_S = 30            # the agent probes once a second; ganesha starts in well under this
READAHEAD = 4 * MiB        # how far the agent reads ahead of a sequential reader
MISS = 16 * MiB            # uncached offsets (chunk-aligned, beyond WARM and its readahead)
MISS2 = 24 * MiB


OUTAGES = {
    # name: (begin, end)
    "stopped": (lambda rig: rig.stop_ganesha(), lambda rig: rig.start_ganesha()),
    "hung": (lambda rig: rig.pause_ganesha(), lambda rig: rig.resume_ganesha()),
}


def timed_read(reader, offset, length=MiB):
    """(bytes or the OSError, seconds) of one O_DIRECT pread."""
    t0 = time.monotonic()
    try:
        got = reader.pread(offset, length)
    except OSError as e:
        got = e
    return got, time.monotonic() - t0


def outcome(got, want=None):
    """A short description of a read's outcome, to compare and to print."""
    if isinstance(got, OSError):
        return errno.errorcode.get(got.errno, str(got.errno))
    if want is None:
        return f"{len(got)} bytes"
    return "source bytes" if got == want else f"{len(got)} bytes NOT the source's"


def ganesha_read(pid, rchar0):
    """What ganesha read since rchar0, for failure messages."""
    try:
        return f"{gcrig.proc_io(pid)['rchar'] - rchar0} bytes (rchar)"
    except OSError:
        return "? (it is gone)"


def log_text(agent):
    with open(agent.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_outage_serves_cached_chunks_fails_misses_with_eio_and_recovers_alone(
        ws, make_template, rig, outage):
    begin, end = OUTAGES[outage]
    t = make_template(TEMPLATE, SIZE, seed=21)
    agent = ws.agent(datastore=rig.url(),
                     extra_args=["--datastore-timeout", f"{TIMEOUT_S}s"]).start()
    pid = agent.pid
    held = gcrig.DirectReader(t.mnt_path)  # the VM holds its disk open
    try:
        for off in range(0, WARM, MiB):  # boot: the first WARM bytes, now cached
            assert held.pread(off, MiB) == t.data[off:off + MiB]
        m = agent.metrics()
        assert m.value("goldcache_datastore_up") == 1
        outages0 = m.value("goldcache_datastore_outages_total")
        assert outages0 == 0
        fetched = m.value("goldcache_datastore_read_bytes_total")
        # The sequential boot is read ahead by a few chunks, never up to MISS.
        assert WARM <= fetched <= WARM + READAHEAD, \
            f"the agent fetched {fetched} bytes for {WARM} read: MISS may already be cached"

        ganesha = rig.ganesha.pid
        rchar = gcrig.proc_io(ganesha)["rchar"]
        begin(rig)

        # Cached chunks on the held handle: served without asking the filer.
        for off in (0, 3 * MiB, WARM - MiB):
            got, _ = timed_read(held, off)
            assert outcome(got, t.data[off:off + MiB]) == "source bytes", \
                f"held handle, cached read at {off} during the outage"

        # The first miss waits at most the timeout, then EIO.
        got, secs = timed_read(held, MISS)
        print(f"{outage}: first uncached read: {outcome(got)} after {secs:.2f} s")
        refetched = agent.metrics().value("goldcache_datastore_read_bytes_total") - fetched
        assert outcome(got, t.data[MISS:MISS + MiB]) == "EIO", (
            f"uncached read at {MISS} during the outage, after {secs:.2f} s; meanwhile the "
            f"agent fetched {refetched} bytes and ganesha read {ganesha_read(ganesha, rchar)}")
        assert secs < TIMEOUT_S + MARGIN_S, \
            f"uncached read failed after {secs:.1f} s; the timeout is {TIMEOUT_S} s"
        m = agent.metrics()
        assert m.value("goldcache_datastore_up") == 0
        assert m.value("goldcache_datastore_outages_total") >= outages0 + 1
        assert "datastore is not answering" in log_text(agent)

        # A new open of the template (another desktop boots): cached chunks serve,
        # from the last known attributes and generation.
        with gcrig.DirectReader(t.mnt_path) as fresh:
            for off in (MiB, WARM - MiB):
                got, _ = timed_read(fresh, off)
                assert outcome(got, t.data[off:off + MiB]) == "source bytes", \
                    f"new open, cached read at {off} during the outage"
            # Now that the agent knows the filer is away, a miss fails at once.
            fast0 = agent.metrics().value("goldcache_datastore_fast_failures_total")
            got, secs = timed_read(fresh, MISS2)
            print(f"{outage}: later uncached read: {outcome(got)} after {secs:.2f} s")
            assert outcome(got, t.data[MISS2:MISS2 + MiB]) == "EIO", \
                f"uncached read at {MISS2} while the datastore is known down"
            assert secs < TIMEOUT_S, f"a miss while the datastore is known down took {secs:.1f} s"
        with open(t.mnt_path, "rb") as f:  # buffered, as most programs read
            f.seek(2 * MiB)
            assert f.read(MiB) == t.data[2 * MiB:3 * MiB]
        m = agent.metrics()
        assert m.value("goldcache_datastore_fast_failures_total") > fast0
        assert m.value("goldcache_datastore_outage_fallbacks_total", what="open") >= 1
        assert agent.running() and agent.pid == pid

        # The filer comes back; nobody touches the agent.
        end(rig)
        t0 = time.monotonic()
        state = {}

        def miss_served():
            got, _ = timed_read(held, MISS)
            state["last"] = outcome(got, t.data[MISS:MISS + MiB])
            return state["last"] != "EIO"

        gcrig.wait_until(miss_served, f"the uncached read at {MISS} succeeds after the "
                         f"filer is back", timeout=RECOVERY_S, interval=0.1)
        print(f"{outage}: uncached read served {time.monotonic() - t0:.2f} s after the filer "
              f"was back")
        assert state["last"] == "source bytes"
        assert held.pread(MISS2, MiB) == t.data[MISS2:MISS2 + MiB]
        assert agent.running() and agent.pid == pid, "the agent was restarted"
        agent.wait_metric("goldcache_datastore_up", lambda v: v == 1, timeout=RECOVERY_S)
        assert "datastore is answering again" in log_text(agent)
        assert agent.metrics().value("goldcache_datastore_outages_total") == outages0 + 1
    finally:
        held.close()

    # Everything reads right after the outage, old handle or new.
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, SIZE), t.data,
                              "the template after the outage")
