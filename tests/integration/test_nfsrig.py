"""The NFS rig itself: ganesha on loopback serves a temporary export over NFSv3,
survives a restart, and leaves nothing running once stopped.

Every test gets its own export and its own free ports, so it can run beside
the demo's rig (ports 20490/20048). The fixture stops what it started even
when the test fails.
"""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nfsrig  # noqa: E402

NFSRIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nfsrig.py")

pytestmark = pytest.mark.skipif(
    not nfsrig.ganesha_available(),
    reason="ganesha.nfsd is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs "
           "rpcbind libnfs-utils, or run scripts/setup.sh)")


def nfs_cat(url: str) -> bytes:
    r = subprocess.run(["nfs-cat", url], capture_output=True, timeout=30)
    assert r.returncode == 0, f"nfs-cat {url}: {r.stderr.decode(errors='replace')}"
    return r.stdout


def listening(port: int) -> bool:
    """Is anything listening on TCP `port` (any address)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


@pytest.fixture
def rig(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    r = nfsrig.GaneshaRig(str(export), port=0, mnt_port=0, state_dir=str(tmp_path / "state"))
    try:
        yield r
    finally:
        problems = r.stop()
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(r.log_tail(), file=sys.stderr)


def test_url_names_export_path_ports_and_version():
    r = nfsrig.GaneshaRig("/tmp")
    try:
        assert r.url("a/b.img") == (
            "nfs://127.0.0.1/tmp/a/b.img?nfsport=20490&mountport=20048&version=3")
        assert r.url() == "nfs://127.0.0.1/tmp?nfsport=20490&mountport=20048&version=3"
    finally:
        r.stop()


def test_serves_export_over_nfsv3_and_across_restart(rig):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several READs at ganesha's 1 MiB max
    with open(os.path.join(rig.export_dir, "template.img"), "wb") as f:
        f.write(data)
    rig.start()
    assert nfs_cat(rig.url("template.img")) == data

    first = rig.ganesha.pid
    rig.restart()
    assert rig.ganesha.pid != first
    assert nfs_cat(rig.url("template.img")) == data


def test_writes_over_nfs_land_in_export(rig, tmp_path):
    rig.start()
    src = tmp_path / "src"
    src.write_bytes(b"written over NFS\n")
    r = subprocess.run(["nfs-cp", str(src), rig.url("copied")], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(rig.export_dir, "copied"), "rb") as f:
        assert f.read() == b"written over NFS\n"


def test_outage_then_recovery(rig):
    with open(os.path.join(rig.export_dir, "f"), "wb") as f:
        f.write(b"x")
    rig.start()
    rig.stop_ganesha()
    assert not listening(rig.port)
    r = subprocess.run(["nfs-cat", rig.url("f")], capture_output=True, timeout=60)
    assert r.returncode != 0
    rig.start_ganesha()
    assert nfs_cat(rig.url("f")) == b"x"


def test_own_rpcbind_listens_on_loopback_only(rig):
    rig.start()
    if rig.rpcbind is None:
        pytest.skip("an rpcbind was already running; the rig used it and left it alone")
    # /proc/net/tcp: local address hex "0100007F:006F" is 127.0.0.1:111.
    with open("/proc/net/tcp", encoding="ascii") as f:
        v4 = [line.split()[1] for line in f.readlines()[1:]
              if line.split()[3] == "0A" and line.split()[1].endswith(":006F")]
    assert v4 == ["0100007F:006F"]
    with open("/proc/net/tcp6", encoding="ascii") as f:
        v6 = [line.split()[1] for line in f.readlines()[1:]
              if line.split()[3] == "0A" and line.split()[1].endswith(":006F")]
    assert all(a == "00000000000000000000000001000000:006F" for a in v6), v6  # ::1 only


def test_stop_leaves_nothing_running(rig):
    rig.start()
    ganesha, rpcbind = rig.ganesha, rig.rpcbind
    assert rig.stop() == []
    assert not ganesha.alive()
    assert not listening(rig.port) and not listening(rig.mnt_port)
    if rpcbind is not None:
        assert not rpcbind.alive()


def test_cli_watchdog_stops_the_rig_when_its_owner_dies(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"cli")
    state = tmp_path / "state"
    owner = subprocess.Popen(["sleep", "600"])
    try:
        r = subprocess.run([sys.executable, NFSRIG, "start", str(export), "--state", str(state),
                            "--port", "0", "--mnt-port", "0", "--owner-pid", str(owner.pid)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        url = r.stdout.strip()
        assert nfs_cat(url.replace("?", "/f?", 1)) == b"cli"
        rig = nfsrig.GaneshaRig.load(str(state))
        assert rig.ganesha.alive() and rig.watchdog.alive()

        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 20
        while rig.ganesha.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not rig.ganesha.alive(), "watchdog did not stop ganesha after its owner died"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        subprocess.run([sys.executable, NFSRIG, "stop", "--state", str(state)],
                       capture_output=True, timeout=60)
