"""nfsrig: a real NFS datastore on loopback, for tests, the demo and benchmarks.

There is no kernel NFS server or client here (docs/design.md §6). The rig runs
nfs-ganesha (FSAL VFS) in user space over a local export directory, bound to
127.0.0.1 on unprivileged ports, and libnfs (nfs-ls, nfs-cat, goldcache's
nfs:// backing) talks to it:

    rig = GaneshaRig("/tmp/x/datastore")        # ports 20490 (NFS), 20048 (MOUNT)
    rig.start()                                 # returns once nfs-ls answers
    rig.url("templates/win11.img")
      # nfs://127.0.0.1/tmp/x/datastore/templates/win11.img?nfsport=20490&mountport=20048&version=3
    rig.stop_ganesha(); rig.start_ganesha()     # a datastore outage and its end
    rig.pause_ganesha(); rig.resume_ganesha()   # a hung filer: SIGSTOP / SIGCONT
    rig.stop()                                  # ganesha, then rpcbind if we started it

What the rig starts, and what it never touches:
- ganesha.nfsd, foreground, as our child; its config, log, pid file and NFSv4
  recovery directory live in the rig's state directory. NFSv4 is graceless, so
  a restarted server answers at once. NLM, RQUOTA and UDP are off.
- rpcbind, only when no portmapper answers on 127.0.0.1:111: ganesha refuses to
  start unless it can register MOUNT and NFS with one. Ours is loopback-only:
  the rig binds 127.0.0.1:111 and [::1]:111 (TCP, UDP) and /run/rpcbind.sock
  itself and hands them over by systemd socket activation, because Debian's
  rpcbind listens on every address for TCP whatever -h says, and aborts
  ("double free") on `-h 127.0.0.1`. An rpcbind that was already running is
  used and left alone.
- Processes are stopped by PID, and only after checking that the PID still
  names the process we started (its start time in /proc), so a recycled PID is
  never signalled. SIGTERM, a bounded wait, then SIGKILL.

Readiness is polled, never slept: `nfs-ls` of the export until it succeeds,
within READY_TIMEOUT_S, failing early (with the log) if ganesha exits.

Command line (for shell scripts and the C++ tests), state kept in --state DIR:
  nfsrig.py start EXPORT_DIR --state DIR [--port P] [--mnt-port M] [--owner-pid PID]
      P or M = 0 picks a free port. Prints the export URL. With --owner-pid a
      small watchdog stops the whole rig when that process ends (a crashed or
      killed test leaves no server behind).
  nfsrig.py stop --state DIR             everything this state dir started
  nfsrig.py stop-ganesha --state DIR     only the NFS server (an outage)
  nfsrig.py start-ganesha --state DIR    the NFS server again, same ports
  nfsrig.py pause-ganesha --state DIR    SIGSTOP: a hung filer (connections stay up)
  nfsrig.py resume-ganesha --state DIR   SIGCONT
  nfsrig.py restart --state DIR
  nfsrig.py url --state DIR [PATH] [--version 3|4]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Optional

NFS_PORT = 20490
MNT_PORT = 20048
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HOST = "127.0.0.1"
RPCBIND_SOCK = "/run/rpcbind.sock"  # where libtirpc looks first to (un)register
STATE_FILE = "rig.json"
FSAL_DIR = "/usr/lib/x86_64-linux-gnu/ganesha"

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class RigError(Exception):
    pass


def _which(name: str) -> str:
    path = shutil.which(name, path=_SBIN_PATH)
    if not path:
        raise RigError(f"{name} not found; install nfs-ganesha nfs-ganesha-vfs rpcbind "
                       "libnfs-utils (scripts/setup.sh does)")
    return path


def ganesha_available() -> bool:
    return shutil.which("ganesha.nfsd", path=_SBIN_PATH) is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Processes we started, by PID


def _start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _running_threads(pid: int) -> list[int]:
    """Threads of `pid` not (yet) in the stopped state 'T' (or traced, 't')."""
    running = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended
        if state not in ("T", "t", "Z", "X"):
            running.append(int(tid))
    return running


class Proc:
    """A process this rig started: its PID and the start time that proves it is still ours."""

    def __init__(self, pid: int, start_time: Optional[int], popen=None):
        self.pid, self.start_time, self.popen = pid, start_time, popen

    @classmethod
    def of(cls, popen: subprocess.Popen) -> "Proc":
        return cls(popen.pid, _start_time(popen.pid), popen)

    def to_json(self) -> dict:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["Proc"]:
        return cls(d["pid"], d["start_time"]) if d else None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return self.start_time is not None and _start_time(self.pid) == self.start_time

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[str]:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns a problem, or None."""
        problem = None
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            except ProcessLookupError:
                pass
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGKILL:
                problem = f"pid {self.pid} ignored SIGTERM for {timeout:.0f} s; sent SIGKILL"
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.popen is not None:
            try:
                self.popen.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            return f"pid {self.pid} is still running after SIGKILL"
        return problem


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Between fork and exec of a server a Python test holds: if the test
    # process dies, the server gets SIGTERM instead of lingering. A new session
    # keeps a terminal's Ctrl-C away from it; the owner stops it in order.
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------
# rpcbind


def portmapper_answers(host: str = HOST, port: int = 111, timeout: float = 2.0) -> bool:
    """True when a portmapper answers an RPC NULL call (program 100000 v2) over TCP."""
    xid = int(time.monotonic_ns() & 0x7FFFFFFF)
    # xid, CALL, rpcvers 2, prog, vers, proc NULL, cred AUTH_NONE, verf AUTH_NONE
    call = struct.pack(">IIIIIIIIII", xid, 0, 2, 100000, 2, 0, 0, 0, 0, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
            reply = b""
            while len(reply) < 4 + 12:
                chunk = s.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    rxid, mtype, stat = struct.unpack(">III", reply[4:16])
    return rxid == xid and mtype == 1 and stat == 0  # REPLY, MSG_ACCEPTED


def _bound(family: int, kind: int, addr) -> socket.socket:
    s = socket.socket(family, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(addr)
        if kind == socket.SOCK_STREAM:
            s.listen(64)
    except OSError:
        s.close()
        raise
    return s


def _unix_socket_is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def start_rpcbind(log_path: str, die_with_owner: bool) -> tuple[Optional[Proc], Optional[int]]:
    """Starts a loopback-only rpcbind. Returns it and the inode of the
    /run/rpcbind.sock we created (None if we could not create one); (None,
    None) when another rig's rpcbind won the race to port 111."""
    binary = _which("rpcbind")
    socks = []
    sock_ino = None
    try:
        socks.append(_bound(socket.AF_INET, socket.SOCK_STREAM, (HOST, 111)))
        socks.append(_bound(socket.AF_INET, socket.SOCK_DGRAM, (HOST, 111)))
        if socket.has_ipv6:
            try:
                socks.append(_bound(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 111)))
                socks.append(_bound(socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 111)))
            except OSError:
                pass  # no ::1 here: rpcbind then skips its IPv6 transports
    except OSError as e:
        for s in socks:
            s.close()
        # Another rig may be starting its rpcbind this very moment: use that one.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if portmapper_answers(timeout=0.5):
                return None, None
            time.sleep(0.1)
        raise RigError(f"cannot bind rpcbind's sockets on {HOST}:111: {e}") from e
    # The local socket is optional: libtirpc falls back to loopback TCP. A
    # socket file nobody listens on is what a dead rpcbind leaves behind.
    u = None
    try:
        if os.path.exists(RPCBIND_SOCK) and not _unix_socket_is_live(RPCBIND_SOCK):
            os.unlink(RPCBIND_SOCK)
        if not os.path.exists(RPCBIND_SOCK):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.bind(RPCBIND_SOCK)
            os.chmod(RPCBIND_SOCK, 0o666)
            u.listen(64)
            sock_ino = os.stat(RPCBIND_SOCK).st_ino
            socks.insert(0, u)
    except OSError:
        if u is not None and u not in socks:
            u.close()

    # sd_listen_fds(): the sockets as fds 3.., LISTEN_FDS, and LISTEN_PID equal
    # to rpcbind's own PID, which only the shell that execs it knows. The
    # copies sit at fd >= 10 so renumbering them to 3..7 never collides.
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10) for s in socks]
    redirect = " ".join(f"{3 + i}<&{fd} {fd}<&-" for i, fd in enumerate(high))
    script = (f"exec {redirect}; export LISTEN_PID=$$ LISTEN_FDS={len(high)}; "
              f"exec {binary} -f")
    try:
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(["/bin/bash", "-c", script], pass_fds=high,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     preexec_fn=_die_with_parent if die_with_owner else None,
                                     start_new_session=not die_with_owner)
    finally:
        for fd in high:
            os.close(fd)
        for s in socks:
            s.close()
    proc = Proc.of(popen)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not portmapper_answers(timeout=0.5):
        problem = None
        if popen.poll() is not None:
            problem = f"rpcbind exited with {popen.returncode}; see {log_path}"
        elif time.monotonic() > deadline:
            proc.stop()
            problem = f"rpcbind did not answer within {READY_TIMEOUT_S:.0f} s"
        if problem:
            if sock_ino and os.stat(RPCBIND_SOCK).st_ino == sock_ino:
                os.unlink(RPCBIND_SOCK)
            raise RigError(problem)
        time.sleep(0.05)
    return proc, sock_ino


# ---------------------------------------------------------------------------
# ganesha


def ganesha_config(export_dir: str, state_dir: str, port: int, mnt_port: int) -> str:
    for p in (export_dir, state_dir):
        if '"' in p or "\n" in p:
            raise RigError(f"path not usable in a ganesha config: {p!r}")
    return f"""# Written by nfsrig.py; one ganesha per state directory.
NFS_CORE_PARAM {{
  Protocols = 3, 4;
  NFS_Port = {port};
  MNT_Port = {mnt_port};
  Bind_Addr = {HOST};
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Plugins_Dir = "{FSAL_DIR}";
}}
NFS_KRB5 {{
  Active_krb5 = false;
}}
NFSV4 {{
  Graceless = true;
  RecoveryRoot = "{state_dir}/recovery";
  Only_Numeric_Owners = true;
}}
EXPORT {{
  Export_Id = 1;
  Path = "{export_dir}";
  Pseudo = "{export_dir}";
  Protocols = 3, 4;
  Access_Type = RW;
  Squash = No_Root_Squash;
  SecType = sys;
  FSAL {{
    Name = VFS;
  }}
}}
LOG {{
  Default_Log_Level = EVENT;
}}
"""


class GaneshaRig:
    """nfs-ganesha serving `export_dir` on 127.0.0.1, plus rpcbind if none runs.

    `state_dir` (default: a new temp dir, removed by stop()) holds the config,
    logs, pid file and rig.json. Not thread-safe: one owner drives it.
    """

    def __init__(self, export_dir: str, port: int = NFS_PORT, mnt_port: int = MNT_PORT,
                 state_dir: Optional[str] = None, die_with_owner: bool = True):
        self.export_dir = os.path.realpath(export_dir)
        if not os.path.isdir(self.export_dir):
            raise RigError(f"export directory {export_dir} does not exist")
        self.port = port or free_port()
        self.mnt_port = mnt_port or free_port()
        self._own_state_dir = state_dir is None
        self.state_dir = os.path.realpath(state_dir or tempfile.mkdtemp(prefix="nfsrig."))
        os.makedirs(os.path.join(self.state_dir, "recovery"), exist_ok=True)
        self.die_with_owner = die_with_owner
        self.ganesha: Optional[Proc] = None
        self.rpcbind: Optional[Proc] = None  # only if we started it
        self.rpcbind_sock_ino: Optional[int] = None
        self.watchdog: Optional[Proc] = None
        self.conf_path = os.path.join(self.state_dir, "ganesha.conf")
        self.log_path = os.path.join(self.state_dir, "ganesha.log")

    # -- URLs ---------------------------------------------------------------

    def url(self, path: str = "", version: int = 3) -> str:
        """libnfs URL of `path` (relative to the export) on this server."""
        full = self.export_dir + ("/" + path.lstrip("/") if path else "")
        return (f"nfs://{HOST}{full}?nfsport={self.port}&mountport={self.mnt_port}"
                f"&version={version}")

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_S) -> "GaneshaRig":
        self.start_ganesha(timeout)
        return self

    def stop(self) -> list[str]:
        """Stops everything this rig started. Returns problems seen (never raises)."""
        problems = []
        for attr in ("watchdog", "ganesha", "rpcbind"):
            proc = getattr(self, attr)
            if proc is None:
                continue
            p = proc.stop()
            if p:
                problems.append(f"{attr}: {p}")
            setattr(self, attr, None)
            if attr == "rpcbind":
                self._remove_rpcbind_sock()
        self._save()
        if self._own_state_dir and not problems:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return problems

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        self.stop_ganesha()
        self.start_ganesha(timeout)

    def running(self) -> bool:
        return self.ganesha is not None and self.ganesha.alive()

    def start_ganesha(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Starts the NFS server (and rpcbind if none answers); returns once it serves."""
        if self.running():
            return
        _which("nfs-ls")
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            if not portmapper_answers():
                rpcbind, ino = start_rpcbind(os.path.join(self.state_dir, "rpcbind.log"),
                                             self.die_with_owner)
                if rpcbind is not None:
                    self.rpcbind, self.rpcbind_sock_ino = rpcbind, ino
                    self._save()
            log_size = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            try:
                self._spawn_ganesha(deadline)
                return
            except RigError:
                # Another rig stopping its rpcbind while ours registered: retry
                # with a fresh one. Anything else is for the caller to see.
                with open(self.log_path, encoding="utf-8", errors="replace") as f:
                    f.seek(log_size)
                    registration_failed = "Cannot register" in f.read()
                if not registration_failed or attempt == 2:
                    raise

    def _spawn_ganesha(self, deadline: float) -> None:
        with open(self.conf_path, "w", encoding="utf-8") as f:
            f.write(ganesha_config(self.export_dir, self.state_dir, self.port, self.mnt_port))
        with open(os.path.join(self.state_dir, "ganesha.out"), "ab") as out:
            popen = subprocess.Popen(
                [_which("ganesha.nfsd"), "-F", "-f", self.conf_path, "-L", self.log_path,
                 "-p", os.path.join(self.state_dir, "ganesha.pid"), "-N", "NIV_EVENT"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=_die_with_parent if self.die_with_owner else None,
                start_new_session=not self.die_with_owner)
        self.ganesha = Proc.of(popen)
        self._save()
        probe = self.url()
        while True:
            if popen.poll() is not None:
                self.ganesha = None
                self._save()
                raise RigError(f"ganesha.nfsd exited with {popen.returncode} while starting:\n"
                               + self.log_tail())
            try:
                r = subprocess.run([_which("nfs-ls"), probe], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=5)
                if r.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                problem = self.ganesha.stop()
                self.ganesha = None
                self._save()
                raise RigError(f"ganesha did not serve {probe} in time"
                               f"{'; ' + problem if problem else ''}\n" + self.log_tail())
            time.sleep(0.05)

    def stop_ganesha(self) -> None:
        """Stops the NFS server only (a datastore outage); rpcbind stays."""
        if self.ganesha is None:
            return
        self.resume_ganesha()  # a stopped process cannot act on SIGTERM
        problem = self.ganesha.stop()
        self.ganesha = None
        self._save()
        if problem:
            raise RigError(f"ganesha: {problem}")

    def pause_ganesha(self, timeout: float = 5.0) -> None:
        """SIGSTOP: a hung filer. Connections stay open and requests go unanswered.

        Returns once every ganesha thread is stopped: kill() only queues the
        stop, and a thread still running for a millisecond or so can answer a
        request sent right after it."""
        if self.ganesha is None or not self.ganesha.alive():
            raise RigError("ganesha is not running")
        os.kill(self.ganesha.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while True:
            running = _running_threads(self.ganesha.pid)
            if not running:
                return
            if time.monotonic() > deadline:
                raise RigError(f"ganesha (pid {self.ganesha.pid}) threads {running} still "
                               f"running {timeout:.0f} s after SIGSTOP")
            time.sleep(0.001)

    def resume_ganesha(self) -> None:
        """SIGCONT after pause_ganesha(); harmless otherwise."""
        if self.ganesha is not None and self.ganesha.alive():
            os.kill(self.ganesha.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return f"(no ganesha log at {self.log_path})"

    def __enter__(self) -> "GaneshaRig":
        return self.start()

    def __exit__(self, *exc) -> None:
        for p in self.stop():
            print(f"nfsrig: {p}", file=sys.stderr)

    # -- state for the command line ------------------------------------------

    def _remove_rpcbind_sock(self) -> None:
        # Only the socket file we created, and only if it is still that file.
        try:
            if self.rpcbind_sock_ino and os.stat(RPCBIND_SOCK).st_ino == self.rpcbind_sock_ino:
                os.unlink(RPCBIND_SOCK)
        except OSError:
            pass
        self.rpcbind_sock_ino = None

    def _save(self) -> None:
        state = {
            "export_dir": self.export_dir, "port": self.port, "mnt_port": self.mnt_port,
            "ganesha": self.ganesha.to_json() if self.ganesha else None,
            "rpcbind": self.rpcbind.to_json() if self.rpcbind else None,
            "rpcbind_sock_ino": self.rpcbind_sock_ino,
            "watchdog": self.watchdog.to_json() if self.watchdog else None,
            "url": self.url(),
        }
        if not os.path.isdir(self.state_dir):
            return
        tmp = os.path.join(self.state_dir, STATE_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(self.state_dir, STATE_FILE))

    @classmethod
    def load(cls, state_dir: str) -> "GaneshaRig":
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as f:
            st = json.load(f)
        rig = cls(st["export_dir"], st["port"], st["mnt_port"], state_dir=state_dir,
                  die_with_owner=False)
        rig.ganesha = Proc.from_json(st["ganesha"])
        rig.rpcbind = Proc.from_json(st["rpcbind"])
        rig.rpcbind_sock_ino = st.get("rpcbind_sock_ino")
        rig.watchdog = Proc.from_json(st.get("watchdog"))
        return rig


# ---------------------------------------------------------------------------
# Command line


def _watch(state_dir: str, owner: int) -> int:
    """Watchdog body: when `owner` ends, stop the rig of `state_dir`."""
    owner_start = _start_time(owner)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while owner_start is not None and _start_time(owner) == owner_start:
        time.sleep(0.5)
    rig = GaneshaRig.load(state_dir)
    rig.watchdog = None  # that is us
    for p in rig.stop():
        print(f"nfsrig watchdog: {p}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfsrig.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start rpcbind (if absent) and ganesha over EXPORT_DIR")
    s.add_argument("export_dir")
    s.add_argument("--port", type=int, default=NFS_PORT, help="NFS port (0: pick a free one)")
    s.add_argument("--mnt-port", type=int, default=MNT_PORT, help="MOUNT port (0: pick)")
    s.add_argument("--owner-pid", type=int, help="stop the rig when this process ends")
    for name in ("stop", "stop-ganesha", "start-ganesha", "pause-ganesha", "resume-ganesha",
                 "restart", "url"):
        c = sub.add_parser(name)
        if name == "url":
            c.add_argument("path", nargs="?", default="")
            c.add_argument("--version", type=int, default=3, choices=(3, 4))
    w = sub.add_parser("watch", help=argparse.SUPPRESS)
    w.add_argument("owner", type=int)
    for c in sub.choices.values():
        c.add_argument("--state", required=True, help="directory holding the rig's state")
    args = p.parse_args(argv)

    try:
        if args.cmd == "start":
            os.makedirs(args.state, exist_ok=True)
            rig = GaneshaRig(args.export_dir, args.port, args.mnt_port, state_dir=args.state,
                             die_with_owner=False)
            try:
                rig.start()
            except RigError:
                rig.stop()
                raise
            if args.owner_pid:
                with open(os.path.join(rig.state_dir, "watchdog.log"), "ab") as log:
                    popen = subprocess.Popen(
                        [sys.executable, os.path.abspath(__file__), "watch",
                         str(args.owner_pid), "--state", rig.state_dir],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        start_new_session=True)
                rig.watchdog = Proc.of(popen)
                rig._save()
            print(rig.url())
        elif args.cmd == "watch":
            return _watch(args.state, args.owner)
        else:
            rig = GaneshaRig.load(args.state)
            if args.cmd == "stop":
                problems = rig.stop()
                for prob in problems:
                    print(f"nfsrig: {prob}", file=sys.stderr)
                return 1 if problems else 0
            if args.cmd == "stop-ganesha":
                rig.stop_ganesha()
            elif args.cmd == "start-ganesha":
                rig.start_ganesha()
            elif args.cmd == "pause-ganesha":
                rig.pause_ganesha()
            elif args.cmd == "resume-ganesha":
                rig.resume_ganesha()
            elif args.cmd == "restart":
                rig.restart()
            elif args.cmd == "url":
                print(rig.url(args.path, args.version))
    except (RigError, OSError) as e:
        print(f"nfsrig: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
