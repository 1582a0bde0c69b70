"""Fixtures for goldcache integration tests: real FUSE mounts, real processes.

`ws` gives each test a fresh Workspace (/tmp/goldcache-test.XXXXXXXX with
datastore/, cache/, mnt/). The test fills the datastore, then starts agents
with ws.agent(...).start(). Whatever happens, the finalizer SIGTERMs the agents
this test started (by PID; SIGKILL after a bounded wait), lazily unmounts
anything left under the workspace, and removes it.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gcrig  # noqa: E402
import nfsrig  # noqa: E402


def pytest_sessionstart(session):
    # Mounts left by an earlier run that crashed or was killed.
    gcrig.clear_stale(log=lambda s: print(f"gcrig: {s}", file=sys.stderr))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def goldcached_bin():
    path = gcrig.default_binary()
    if not os.access(path, os.X_OK):
        pytest.fail(f"goldcached not built: {path} (set GOLDCACHE_BIN)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.fail("/dev/fuse is not usable by this user")
    return path


@pytest.fixture
def ws(request, goldcached_bin):
    workspace = gcrig.Workspace(keep=bool(os.environ.get("GOLDCACHE_KEEP")))
    yield workspace
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    if failed:
        for a in workspace.agents:
            if a.log_path:
                print(a.log_tail(80), file=sys.stderr)
    problems = workspace.cleanup()
    for p in problems:
        print(f"gcrig cleanup: {p}", file=sys.stderr)


class Template:
    """A template file on the datastore whose content the test knows."""

    def __init__(self, ws, rel, data):
        self.ws, self.rel, self.data = ws, rel, data

    @property
    def size(self):
        return len(self.data)

    @property
    def ds_path(self):
        return self.ws.ds(self.rel)

    @property
    def mnt_path(self):
        return self.ws.mnt(self.rel)


@pytest.fixture
def make_template(ws):
    """make_template(rel, size=..., seed=..., data=None) writes a template on the datastore."""

    def make(rel="templates/win11.img", size=64 * gcrig.MiB, seed=1, data=None):
        if data is None:
            data = gcrig.random_bytes(size, seed)
        gcrig.write_file(ws.ds(rel), data)
        return Template(ws, rel, data)

    return make


@pytest.fixture
def rig(request, ws):
    """ganesha serving the workspace's datastore/ on free loopback ports (the
    NFS tests' datastore).
    Stopped after the test's agents (they hold NFS sessions to it)."""
    if not nfsrig.ganesha_available():
        pytest.fail("ganesha.nfsd not installed (nfs-ganesha nfs-ganesha-vfs rpcbind "
                    "libnfs-utils; scripts/setup.sh installs them)")
    r = nfsrig.GaneshaRig(ws.datastore, port=0, mnt_port=0,
                          state_dir=os.path.join(ws.root, "nfsrig"))
    try:
        yield r.start()
    finally:
        for a in ws.agents:
            for p in a.terminate():
                print(f"gcrig: {p}", file=sys.stderr)
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print("--- ganesha log ---\n" + r.log_tail(), file=sys.stderr)
        for p in r.stop():
            print(f"nfsrig: {p}", file=sys.stderr)
