"""Templates are read-only through the mount; nonpersistent files never write the datastore."""

import errno
import hashlib
import os

import pytest

import gcrig
from gcrig import MiB


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(root):
    """Every path under `root` with its size and mtime."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def mutations(ws, rel):
    """Operations a read-only file must refuse, by name."""
    path = ws.mnt(rel)
    parent = os.path.dirname(path)
    return {
        "open_wronly": lambda: os.close(os.open(path, os.O_WRONLY)),
        "open_rdwr": lambda: os.close(os.open(path, os.O_RDWR)),
        "open_wronly_trunc": lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC)),
        "open_append": lambda: os.close(os.open(path, os.O_WRONLY | os.O_APPEND)),
        "truncate": lambda: os.truncate(path, 0),
        "create_beside": lambda: os.close(os.open(os.path.join(parent, "new.img"),
                                                  os.O_CREAT | os.O_WRONLY, 0o644)),
        "mkdir_beside": lambda: os.mkdir(os.path.join(parent, "newdir")),
        "unlink": lambda: os.unlink(path),
        "rename_away": lambda: os.rename(path, path + ".moved"),
        "chmod": lambda: os.chmod(path, 0o600),
        "utime": lambda: os.utime(path, (1, 1)),
    }


MUTATIONS = ["open_wronly", "open_rdwr", "open_wronly_trunc", "open_append", "truncate",
             "create_beside", "mkdir_beside", "unlink", "rename_away", "chmod", "utime"]


@pytest.fixture
def readonly_setup(ws, make_template):
    t = make_template("templates/win11.img", 4 * MiB, seed=41)
    gcrig.write_file(ws.ds("pool/vm017.img"), gcrig.random_bytes(2 * MiB, seed=42))
    agent = ws.agent().start()
    return ws, t, agent


@pytest.mark.parametrize("op", MUTATIONS)
def test_template_mutation_through_mount_fails_erofs_and_datastore_is_unchanged(
        readonly_setup, op):
    ws, t, agent = readonly_setup
    before_sum = sha256(t.ds_path)
    before_tree = tree(ws.datastore)

    with pytest.raises(OSError) as exc:
        mutations(ws, t.rel)[op]()
    assert exc.value.errno == errno.EROFS, \
        f"{op} on a template failed with {errno.errorcode.get(exc.value.errno)}, expected EROFS"

    assert sha256(t.ds_path) == before_sum
    assert tree(ws.datastore) == before_tree
    assert agent.metrics().value("goldcache_datastore_write_bytes_total") == 0


@pytest.mark.parametrize("op", MUTATIONS)
def test_nonpersistent_mutation_never_reaches_datastore(readonly_setup, op):
    # Invariant 4. Until the overlay lands these fail with EROFS; with the
    # overlay they succeed on the host. Either way the datastore is untouched.
    ws, t, agent = readonly_setup
    rel = "pool/vm017.img"
    before_sum = sha256(ws.ds(rel))
    before_tree = tree(ws.datastore)

    try:
        mutations(ws, rel)[op]()
    except OSError as e:
        assert e.errno == errno.EROFS, \
            f"{op} on a nonpersistent file failed with {errno.errorcode.get(e.errno)}"

    assert sha256(ws.ds(rel)) == before_sum
    assert tree(ws.datastore) == before_tree
    assert agent.metrics().value("goldcache_datastore_write_bytes_total") == 0


def test_template_stays_readable_after_refused_writes(readonly_setup):
    ws, t, agent = readonly_setup
    for op in ("open_wronly", "truncate"):
        with pytest.raises(OSError):
            mutations(ws, t.rel)[op]()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "template")
