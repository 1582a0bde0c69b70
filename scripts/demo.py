"""goldcache demo: a boot storm of 8 desktops on one template, twice, then
8 desktops (linked clones) reading and writing through the mount, all over a
real NFS datastore.

Run through ./scripts/demo.sh (which builds first). Makes a demo datastore in
/tmp/goldcache-test.XXXXXXXX and serves it over NFSv3 from a user-space
nfs-ganesha bound to 127.0.0.1 on free ports (tests/integration/nfsrig.py; no
kernel NFS here), mounts goldcached over its nfs:// URL, lets 8 readers read
the 256 MiB template through the mount at once (O_DIRECT, each in its own
order), prints what the NFS server had to serve, repeats the storm from a warm
cache, then stops the agent and the NFS server and removes everything. Ctrl-C
at any point cleans up too.

GOLDCACHE_DEMO_DATASTORE=dir runs the same demo over the plain directory
instead of NFS; GOLDCACHE_DEMO_MIB sets the template size (default 256).
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import gcrig  # noqa: E402
import nfsrig  # noqa: E402
from gcrig import KiB, MiB  # noqa: E402

TEMPLATE = "templates/win11.img"
SIZE = int(os.environ.get("GOLDCACHE_DEMO_MIB", "256")) * MiB
DATASTORE = os.environ.get("GOLDCACHE_DEMO_DATASTORE", "nfs")  # nfs | dir
DESKTOPS = [("sequential", MiB), ("reverse", MiB), ("random", MiB), ("strided7", MiB),
            ("middle_out", MiB), ("random2", 256 * KiB), ("odd_then_even", 64 * KiB),
            ("halves_swapped", MiB)]


def human(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def say(msg):
    print(f"demo: {msg}", flush=True)


def storm(path, data):
    """8 desktops read the whole template concurrently; returns (seconds, bad blocks)."""
    barrier = threading.Barrier(len(DESKTOPS))

    def desktop(d):
        name, block = d
        order = gcrig.block_orders(len(data) // block, seed=5)[name]
        barrier.wait(60)
        return gcrig.read_compare(path, data, order, block)

    ex = ThreadPoolExecutor(len(DESKTOPS))
    try:
        t0 = time.monotonic()
        bad = sum(len(b) for b in ex.map(desktop, DESKTOPS))
        return time.monotonic() - t0, bad
    finally:
        # On Ctrl-C do not wait for readers; stopping the agent ends them.
        ex.shutdown(wait=False, cancel_futures=True)


def report(title, agent, before, seconds, bad, rig=None, rchar0=None):
    m = agent.metrics()
    d = lambda name, **kw: m.value(name, 0.0, **kw) - before.value(name, 0.0, **kw)  # noqa: E731
    desk = len(DESKTOPS) * SIZE
    ds = d("goldcache_datastore_read_bytes_total")
    chunks = SIZE / MiB  # default chunk size
    say(f"{title}: {len(DESKTOPS)} desktops read {human(desk)} in {seconds:.1f} s "
        f"({human(desk / seconds)}/s); the datastore served {human(ds)} "
        f"({ds / SIZE:.2f} reads per chunk; {d('goldcache_datastore_read_ops_total'):.0f} read ops "
        f"for {chunks:.0f} chunks): {100 * (1 - ds / desk):.1f} % offload")
    say(f"{title}: from cache {human(d('goldcache_read_bytes_total', source='cache'))}, "
        f"from datastore {human(d('goldcache_read_bytes_total', source='datastore'))}; "
        f"chunk hits {d('goldcache_cache_hits_total'):.0f}, misses "
        f"{d('goldcache_cache_misses_total'):.0f}; cache holds "
        f"{human(m.value('goldcache_cache_used_bytes', 0.0))} of "
        f"{human(m.value('goldcache_cache_capacity_bytes', 0.0))}; "
        f"{'every byte matched the template' if not bad else f'{bad} BLOCKS DIFFERED'}")
    if rig is not None:
        say(f"{title}: the NFS server itself read {human(ganesha_rchar(rig) - rchar0)} "
            f"(ganesha's /proc/{rig.ganesha.pid}/io rchar)")
    return m, bad


def ganesha_rchar(rig):
    return gcrig.proc_io(rig.ganesha.pid)["rchar"]


def datastore_sha256(ws, rig, rel):
    """sha256 of a datastore file as the datastore has it: read over NFS
    directly with nfs-cat (no goldcache) when there is an NFS server."""
    if rig is None:
        return gcrig.sha256_file(ws.ds(rel))
    return hashlib.sha256(gcrig.nfs_cat(rig.url(rel))).hexdigest()


def desktops_at_work(ws, agent, rig):
    """8 desktops (qcow2 linked clones of the template, provisioned on the
    datastore) boot through the mount: each reads from its template through the
    clone and writes its own data, with real QEMU IO (qemu-io, cache=none).
    Their writes stay on this host; shutting them down discards them."""
    clones = [f"pool/vm{i:02d}.qcow2" for i in range(1, len(DESKTOPS) + 1)]
    for c in clones:  # provisioning, on the datastore itself (a few hundred KiB each)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        "../" + TEMPLATE, os.path.basename(c)], cwd=ws.ds("pool"), check=True)
    before_sha = {c: datastore_sha256(ws, rig, c) for c in clones}
    before = agent.metrics()
    # The hypervisor holds each disk open while its VM runs.
    held = [os.open(ws.mnt(c), os.O_RDONLY) for c in clones]
    try:
        procs = []
        for i, c in enumerate(clones):
            pattern = 0x10 + i
            # Within the template's size, whatever GOLDCACHE_DEMO_MIB says.
            boot, at, size = min(32 * MiB, SIZE // 2), SIZE // 4, min(16 * MiB, SIZE // 4)
            cmds = [f"read -q 0 {boot}",                               # boot: template blocks
                    f"write -q -P {pattern:#x} {at} {size}",           # the desktop's own writes
                    f"read -q -P {pattern:#x} {at} {size}"]            # and they read back
            argv = ["qemu-io", "-f", "qcow2", "-t", "none"]
            for cmd in cmds:
                argv += ["-c", cmd]
            procs.append(subprocess.Popen(argv + [ws.mnt(c)], stdin=subprocess.DEVNULL))
        failed = [c for c, p in zip(clones, procs) if p.wait(600) != 0]
        m = agent.metrics()
        d = lambda name, **kw: m.value(name, 0.0, **kw) - before.value(name, 0.0, **kw)  # noqa
        say(f"desktops: {len(clones)} linked clones booted (qemu-io -t none), each wrote {human(min(16 * MiB, SIZE // 4))}; "
            f"{'all verified' if not failed else 'FAILED: ' + ', '.join(failed)}")
        say(f"desktops: overlays hold {human(m.value('goldcache_overlay_bytes', 0.0, tier='ram'))}"
            f" in RAM, {human(m.value('goldcache_overlay_bytes', 0.0, tier='disk'))} on local "
            f"disk; the datastore received {d('goldcache_datastore_write_bytes_total'):.0f} bytes")
        print(agent.cli("list").stdout, flush=True)
    finally:
        for fd in held:
            os.close(fd)
    # Last close = the VM shut down: its overlay is discarded.
    left = json.loads(agent.cli("list", "--json").stdout)["desktops"]
    unchanged = all(datastore_sha256(ws, rig, c) == before_sha[c] for c in clones)
    say(f"desktops shut down: {len(left)} overlays left (all discarded on last close); "
        f"clones on the datastore {'unchanged' if unchanged else 'CHANGED'}"
        + (" (sha256 read back over NFS with nfs-cat)" if rig is not None else ""))
    return not failed and unchanged


def main():
    # SIGTERM (and SIGHUP) end the demo like Ctrl-C: through the finally below.
    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored

    gcrig.clear_stale(log=lambda s: say(s))
    if DATASTORE not in ("nfs", "dir"):
        say(f"GOLDCACHE_DEMO_DATASTORE={DATASTORE}: expected nfs (default) or dir")
        return 2
    ws = gcrig.Workspace()
    agent = None
    rig = None
    ok = False
    try:
        say(f"datastore {ws.datastore}: writing {TEMPLATE} ({human(SIZE)} of random data)")
        data = gcrig.random_bytes(SIZE, seed=2026)
        gcrig.write_file(ws.ds(TEMPLATE), data)
        os.makedirs(ws.ds("pool"))
        gcrig.write_file(ws.ds("vms/notes.txt"), b"a passthrough file\n")

        source = ws.datastore
        if DATASTORE == "nfs":
            # The filer: NFSv3 from a user-space nfs-ganesha on loopback, free ports.
            rig = nfsrig.GaneshaRig(ws.datastore, port=0, mnt_port=0)
            rig.start()
            source = rig.url()
            say(f"the datastore runs over NFSv3 from a user-space nfs-ganesha (pid "
                f"{rig.ganesha.pid}) on loopback, 127.0.0.1:{rig.port}: {source}"
                + (" (and an rpcbind the demo started)" if rig.rpcbind else ""))
        else:
            say("GOLDCACHE_DEMO_DATASTORE=dir: the datastore is the plain directory, no NFS")

        # A small RAM tier per desktop, so the demo shows writes spilling to local disk.
        agent = ws.agent(datastore=source, cache_size="1GiB",
                         extra_args=["--overlay-ram", "8MiB"])
        agent.start()
        say("started: goldcached " + " ".join(agent.argv()[1:]).replace(ws.root, "$WS"))
        with open(ws.mnt("vms/notes.txt"), "rb") as f:
            say(f"vms/notes.txt (no rule: passthrough to the datastore) through the mount: "
                f"{f.read().decode().strip()!r}")
        say(f"goldcached pid {agent.pid} is ready (sd_notify READY=1): "
            f"{ws.mountpoint} mirrors the datastore, /metrics at {agent.url('/metrics')}")

        try:
            os.open(ws.mnt(TEMPLATE), os.O_WRONLY)
            say("UNEXPECTED: the template opened for writing")
        except OSError as e:
            say(f"writing the template through the mount: {os.strerror(e.errno)}"
                + (" (templates are read-only, as designed)" if e.errno == errno.EROFS else ""))

        before = agent.metrics()
        rchar = ganesha_rchar(rig) if rig else None
        secs, bad = storm(ws.mnt(TEMPLATE), data)
        after1, bad1 = report("storm 1 (cold cache)", agent, before, secs, bad, rig, rchar)

        rchar = ganesha_rchar(rig) if rig else None
        secs, bad = storm(ws.mnt(TEMPLATE), data)
        _, bad2 = report("storm 2 (warm cache)", agent, after1, secs, bad, rig, rchar)

        desktops_ok = desktops_at_work(ws, agent, rig)
        print(agent.cli("status").stdout, flush=True)

        say(f"stopping goldcached (SIGTERM to pid {agent.pid})")
        rc = agent.stop()
        say(f"goldcached exited with {rc}; mounted: {gcrig.is_mounted(ws.mountpoint)}")
        ok = (rc == 0 and not bad1 and not bad2 and desktops_ok
              and not gcrig.is_mounted(ws.mountpoint))
    except KeyboardInterrupt:
        say("interrupted")
    except gcrig.AgentError as e:
        say(f"agent failed: {e}")
    except nfsrig.RigError as e:
        say(f"the NFS server failed: {e}")
    finally:
        # The agent first (it holds NFS sessions), then the NFS server.
        for p in ws.cleanup():
            say(f"cleanup: {p}")
        if rig is not None:
            what = "ganesha and the rpcbind it needed" if rig.rpcbind else "ganesha"
            problems = rig.stop()
            for p in problems:
                say(f"cleanup: nfsrig: {p}")
            say(f"stopped the NFS server ({what})" if not problems
                else "the NFS server did not stop cleanly")
        say(f"removed {ws.root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
