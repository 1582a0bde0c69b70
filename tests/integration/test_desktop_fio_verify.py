"""fio verify=crc32c over a 1 GiB nonpersistent desktop disk whose 64 MiB RAM
tier spills to the overlay's disk tier: every byte read back is the byte
written, and the datastore file never changes."""

import json
import os
import shutil
import subprocess
import threading

import pytest

import gcrig
from gcrig import GiB, MiB

DISK = "pool/vm1.img"
SIZE = GiB
HEAD = 64 * MiB  # the datastore file: 64 MiB of random data, then a hole up to 1 GiB
OVERLAY_RAM = "64MiB"


def fio_jobs(path):
    """Two jobs in one fio run, one after the other (stonewall):

    dirty   random writes of 4K-1M over the disk, 512 MiB in all: overwrites
            that leave stale data in the overlay's log, to be reclaimed;
    verify  random writes of 4K-1M covering the whole 1 GiB once (fio's random
            map), each block stamped with a crc32c header, then every block
            read back and checked; the first bad block fails the run.

    fio keeps the file open across the write and verify phases of one job
    (checked with strace: one open for both), but closes it between the two
    jobs; the test holds its own handle meanwhile (see below).
    """
    common = [f"--filename={path}", "--rw=randwrite", "--bsrange=4k-1m", "--direct=1",
              "--ioengine=io_uring", "--iodepth=16", f"--size={SIZE}"]
    return (["fio", "--output-format=json", "--verify_state_save=0",
             "--name=dirty"] + common + ["--io_size=512m", "--randseed=11"]
            + ["--name=verify", "--stonewall"] + common
            + ["--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randseed=12"])


class Peak(threading.Thread):
    """Samples goldcache_overlay_bytes{tier="disk"} while the writes run."""

    def __init__(self, agent):
        super().__init__(daemon=True)
        self.agent, self.peak, self.done = agent, 0.0, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            try:
                v = self.agent.metrics().value("goldcache_overlay_bytes", tier="disk")
            except Exception:  # noqa: BLE001 (a sample lost to a busy agent is fine)
                continue
            self.peak = max(self.peak, v)

    def stop(self):
        self.done.set()
        self.join(10)
        return self.peak


def test_fio_crc32c_verify_passes_over_spilled_overlay_and_datastore_is_untouched(ws):
    if not shutil.which("fio"):
        pytest.fail("fio not installed")
    head = gcrig.random_bytes(HEAD, seed=31)
    gcrig.write_file(ws.ds(DISK), head)
    os.truncate(ws.ds(DISK), SIZE)
    ds_sha = gcrig.sha256_file(ws.ds(DISK))
    ds_stat = os.stat(ws.ds(DISK))

    agent = ws.agent(cache_size="3GiB", extra_args=["--overlay-ram", OVERLAY_RAM]).start()
    mnt = ws.mnt(DISK)

    # The "VM" keeps its disk open for the whole run, as QEMU would: with the
    # default reset=on-last-close, fio closing the file between its two jobs
    # must not discard the overlay.
    vm = os.open(mnt, os.O_RDONLY)
    try:
        sampler = Peak(agent)
        sampler.start()
        r = subprocess.run(fio_jobs(mnt), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ws.root, timeout=300, check=False)
        peak_disk = sampler.stop()
        assert r.returncode == 0, f"fio exited {r.returncode}\n{r.stderr[-3000:]}"
        # fio's words for a bad block ("crc32c: verify failed at file ...",
        # "verify: bad magic header ...").
        assert "verify failed" not in r.stderr and "bad magic header" not in r.stderr, r.stderr
        jobs = {j["jobname"]: j for j in json.loads(r.stdout[r.stdout.index("{"):])["jobs"]}
        assert {n: j["error"] for n, j in jobs.items()} == {"dirty": 0, "verify": 0}
        assert jobs["dirty"]["write"]["io_bytes"] >= 512 * MiB
        assert jobs["verify"]["write"]["io_bytes"] == SIZE
        # verify read back every block it wrote, and found none bad (verify_fatal).
        assert jobs["verify"]["read"]["io_bytes"] == SIZE, jobs["verify"]["read"]

        m = agent.metrics()
        assert max(peak_disk, m.value("goldcache_overlay_bytes", tier="disk")) > 0, \
            "the 64 MiB RAM tier never spilled to disk"
        # 1 GiB of live data with a 64 MiB RAM tier: almost all of it is on disk.
        assert m.value("goldcache_overlay_bytes", tier="disk") >= SIZE - 64 * MiB - 4 * MiB
        assert m.value("goldcache_overlay_spilled_bytes_total") >= SIZE - 64 * MiB
        assert m.value("goldcache_overlay_reclaimed_bytes_total") > 0, \
            "1.5 GiB written over 1 GiB, yet no overwritten log space was reclaimed"
        assert m.value("goldcache_overlay_enospc_total") == 0
        assert m.value("goldcache_read_bytes_total", source="overlay") >= SIZE
        d = agent.desktops()[DISK]
        assert d["host_only"] is False and d["open_handles"] >= 1 and d["size_bytes"] == SIZE
        assert d["overlay_disk_bytes"] + d["overlay_ram_bytes"] >= SIZE - 4 * MiB
    finally:
        os.close(vm)

    # Last handle closed: "the VM shut down"; the overlay goes, the disk reads
    # as the datastore file again.
    agent.wait_metric("goldcache_desktop_resets_total", lambda v: v >= 1, reason="last_close")
    agent.wait_metric("goldcache_overlay_bytes", lambda v: v == 0, tier="disk")
    agent.wait_metric("goldcache_overlay_bytes", lambda v: v == 0, tier="ram")
    with gcrig.DirectReader(mnt) as rd:
        gcrig.assert_same_content(b"".join(rd.pread(o, MiB) for o in range(0, HEAD, MiB)),
                                  head, f"{DISK} head after reset")
        for off in (HEAD, SIZE // 2, SIZE - MiB):
            assert rd.pread(off, MiB) == bytes(MiB), f"{DISK} at {off} after reset is not the hole"

    assert gcrig.sha256_file(ws.ds(DISK)) == ds_sha, "the datastore file's content changed"
    after = os.stat(ws.ds(DISK))
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == \
        (ds_stat.st_size, ds_stat.st_mtime_ns, ds_stat.st_ctime_ns)
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
