"""Files created through the mount belong to whoever created them, as on a
network file system, never to the root agent; and a creation through the
mount never makes a set-user-ID or set-group-ID file (issue 9.7). Checked
on the datastore (a passthrough area) and on a host-only file of a
nonpersistent area, as an unprivileged user."""

import os
import pwd
import random
import stat
import subprocess

CREATE = """
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o6755)
os.write(fd, b"x")
os.close(fd)
os.mkdir(sys.argv[2], 0o2775)
fd = os.open(sys.argv[3], os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o4700)
os.close(fd)
"""


def test_creations_belong_to_the_caller_and_carry_no_set_id_bits(ws):
    os.makedirs(ws.ds("iso"), exist_ok=True)
    os.makedirs(ws.ds("pool"), exist_ok=True)
    for d in (ws.datastore, ws.ds("iso"), ws.ds("pool")):
        os.chmod(d, 0o777)  # the user may create there (the mount mirrors these modes)
    agent = ws.agent().start()
    user = f"gc-test-{random.randrange(10**6):06d}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    user], check=True, capture_output=True, timeout=60)
    try:
        uid = pwd.getpwnam(user).pw_uid
        os.chmod(ws.root, 0o711)
        r = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", CREATE,
                            ws.mnt("iso/tool"), ws.mnt("iso/dir"), ws.mnt("pool/notes.qcow2")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

        f = os.stat(ws.ds("iso/tool"))  # on the datastore itself
        assert f.st_uid == uid, f"iso/tool is owned by {f.st_uid}, not the creator {uid}"
        assert stat.S_IMODE(f.st_mode) & (stat.S_ISUID | stat.S_ISGID) == 0, oct(f.st_mode)
        d = os.stat(ws.ds("iso/dir"))
        assert d.st_uid == uid, f"iso/dir is owned by {d.st_uid}, not the creator {uid}"
        via_mount = os.stat(ws.mnt("iso/tool"))
        assert via_mount.st_uid == uid

        local = os.stat(ws.mnt("pool/notes.qcow2"))  # host only
        assert not os.path.exists(ws.ds("pool/notes.qcow2"))
        assert local.st_uid == uid, f"pool/notes.qcow2 is owned by {local.st_uid}, not {uid}"
        assert stat.S_IMODE(local.st_mode) & stat.S_ISUID == 0, oct(local.st_mode)

        # Root's creations stay root's.
        with open(ws.mnt("iso/by-root"), "w") as fh:
            fh.write("r")
        assert os.stat(ws.ds("iso/by-root")).st_uid == 0
    finally:
        agent.stop()
        subprocess.run(["userdel", user], capture_output=True, timeout=60)
