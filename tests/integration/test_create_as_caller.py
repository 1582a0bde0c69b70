"""Files created through the mount belong to whoever created them, as on a
network file system, never to the root agent; and a creation through the
mount never makes a set-user-ID or set-group-ID file (issue 9.7). Checked
on the datastore (a passthrough area) and on a host-only file of a
nonpersistent area, as an unprivileged user; and with the caller's
supplementary groups, which the kernel's permission check on the mount used
too."""

import grp
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


def test_creations_use_the_callers_supplementary_groups(ws):
    """A directory the caller may write only through a supplementary group:
    the kernel's check on the mount lets the creation through, so the agent's
    creation on the datastore must carry that group too, or the user gets
    EACCES where the datastore itself would have said yes."""
    team = ws.ds("iso/team")
    os.makedirs(team)
    os.chmod(ws.datastore, 0o755)
    os.chmod(ws.ds("iso"), 0o755)
    suffix = f"{random.randrange(10**6):06d}"
    group, user = f"gc-team-{suffix}", f"gc-test-{suffix}"
    subprocess.run(["groupadd", "--system", group], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "-G", group, user], check=True, capture_output=True, timeout=60)
        gid = grp.getgrnam(group).gr_gid
        os.chown(team, 0, gid)
        os.chmod(team, 0o770)  # the group may create there, nobody else but root
        agent = ws.agent().start()
        try:
            uid = pwd.getpwnam(user).pw_uid
            os.chmod(ws.root, 0o711)
            # runuser sets the user's supplementary groups from /etc/group.
            r = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c",
                                "import os, sys; print(os.getgroups()); "
                                "open(sys.argv[1], 'w').write('team'); os.mkdir(sys.argv[2])",
                                ws.mnt("iso/team/report.txt"), ws.mnt("iso/team/sub")],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"as {user} (groups {r.stdout.strip()}): {r.stderr}"
            f = os.stat(ws.ds("iso/team/report.txt"))
            assert f.st_uid == uid, f"owned by {f.st_uid}, not the creator {uid}"
            assert os.stat(ws.ds("iso/team/sub")).st_uid == uid
            with open(ws.ds("iso/team/report.txt")) as fh:
                assert fh.read() == "team"
            # Root's own creations there still work and stay root's: the
            # caller's groups did not stick to the agent's thread.
            with open(ws.mnt("iso/team/by-root"), "w") as fh:
                fh.write("r")
            st = os.stat(ws.ds("iso/team/by-root"))
            assert (st.st_uid, st.st_gid) == (0, 0)
        finally:
            agent.stop()
            subprocess.run(["userdel", user], capture_output=True, timeout=60)
    finally:
        subprocess.run(["groupdel", group], capture_output=True, timeout=60)
