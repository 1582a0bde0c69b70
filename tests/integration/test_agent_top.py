"""`goldcache top` against a running agent: one desktop busy writing, one
open and idle, a template read from the cache and a passthrough file read
from the datastore, all through the real mount while `top` samples.

--once prints one frame of at most 80 columns with the busy desktop first,
the idle one at zero, the template's hit ratio and the filer's load; --json
gives the same rates as numbers; the live view on a terminal (a pty) redraws
and leaves on `q`, putting the terminal back.
"""

import fcntl
import json
import mmap
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time

import pytest

import gcrig
from gcrig import KiB, MiB

TEMPLATE = "templates/t.img"
BUSY = "pool/busy.img"
IDLE = "pool/idle.img"
ISO = "iso/install.iso"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_binary(agent):
    return os.path.join(os.path.dirname(agent.binary), "goldcache")


class Load:
    """Keeps IO going through the mount until stopped: O_DIRECT writes to
    the busy desktop, reads of the template (cached) and of a passthrough
    file (from the datastore)."""

    def __init__(self, ws):
        self.ws = ws
        self.stop = threading.Event()
        self.error = None
        self.rounds = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        buf = mmap.mmap(-1, 64 * KiB)
        buf.write(os.urandom(64 * KiB))
        view = memoryview(buf)
        fds = []
        try:
            desk = os.open(self.ws.mnt(BUSY), os.O_RDWR | os.O_DIRECT)
            fds.append(desk)
            tpl = os.open(self.ws.mnt(TEMPLATE), os.O_RDONLY | os.O_DIRECT)
            fds.append(tpl)
            iso = os.open(self.ws.mnt(ISO), os.O_RDONLY | os.O_DIRECT)
            fds.append(iso)
            i = 0
            while not self.stop.is_set():
                off = (i % 64) * 64 * KiB
                os.pwritev(desk, [view[:64 * KiB]], off)
                os.preadv(tpl, [view[:64 * KiB]], off)
                os.preadv(iso, [view[:4 * KiB]], (i % 256) * 4 * KiB)
                i += 1
                self.rounds = i
        except Exception as e:  # reported by the test, not lost in a thread
            self.error = e
        finally:
            for fd in fds:
                os.close(fd)
            view.release()
            buf.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the load thread did not stop"
        assert self.error is None, f"IO through the mount failed: {self.error!r}"


@pytest.fixture
def host(ws, make_template):
    """An agent with a cached template, a passthrough file, and two open
    desktops: IDLE written once (overlay in RAM) and then left alone."""
    t = make_template(TEMPLATE, 4 * MiB, seed=41)
    for rel, seed in ((BUSY, 42), (IDLE, 43), (ISO, 44)):
        gcrig.write_file(ws.ds(rel), gcrig.random_bytes(4 * MiB, seed))
    agent = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "warm-up")
    idle = os.open(ws.mnt(IDLE), os.O_RDWR)
    os.pwrite(idle, b"i" * (64 * KiB), 0)
    os.fsync(idle)
    yield agent
    os.close(idle)


def top(agent, *args, timeout=60):
    r = subprocess.run([cli_binary(agent), "--socket", agent.control_socket, "top", *args],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"goldcache top {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return r.stdout


def wait_counting(agent):
    """Until the agent has counted the load's IO: it is running."""
    def counting():
        d = agent.desktops().get(BUSY)
        return d is not None and d["write_ops"] > 0
    gcrig.wait_until(counting, f"the agent counts writes of {BUSY}")


def table(lines, header):
    """The rows under the header line starting with `header`, up to a blank."""
    for i, line in enumerate(lines):
        if line.startswith(header + " "):
            rows = []
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                rows.append(row.split())
            return line.split(), rows
    raise AssertionError(f"no {header} table in:\n" + "\n".join(lines))


def test_once_prints_one_frame_busiest_first_within_80_columns(ws, host):
    with Load(ws):
        wait_counting(host)
        text = top(host, "--once", "--interval", "1s")
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(l for l in lines if len(l) > 80)
    assert lines[0].startswith("goldcache "), text

    head, rows = table(lines, "DESKTOP")
    assert [r[0] for r in rows] == [BUSY, IDLE], text
    col = {name: i for i, name in enumerate(head)}
    busy, idle = rows
    assert busy[col["WIOPS"]] != "0" and busy[col["WRITE/s"]] != "0", text
    assert idle[col["RIOPS"]] == "0" and idle[col["WIOPS"]] == "0", text
    assert idle[col["HIT"]] == "-" and idle[col["RLAT"]] == "-", text  # nothing to measure
    assert idle[col["RAM"]] == "64K", text  # its overlay, in the RAM tier

    head, rows = table(lines, "TEMPLATE")
    col = {name: i for i, name in enumerate(head)}
    assert [r[0] for r in rows] == [TEMPLATE], text
    assert rows[0][col["RIOPS"]] != "0", text
    assert rows[0][col["HIT"]] == "100%", text  # warmed: every read a cache hit
    assert rows[0][col["OPEN"]] == "1", text

    head, rows = table(lines, "DATASTORE")
    col = {name: i for i, name in enumerate(head)}
    assert [r[0] for r in rows] == [os.path.basename(ws.mountpoint)], text
    assert rows[0][col["STATE"]] == "up", text
    assert rows[0][col["RIOPS"]] != "0" and rows[0][col["RLAT"]] != "-", text  # the ISO's reads


def test_once_json_gives_the_rates_as_numbers(ws, host):
    with Load(ws) as load:
        wait_counting(host)
        before = load.rounds
        rates = json.loads(top(host, "--once", "--json", "--interval", "500ms"))
        assert load.rounds > before
    assert 0.4 < rates["interval_seconds"] < 30
    desktops = {d["path"]: d for d in rates["desktops"]}
    assert [d["path"] for d in rates["desktops"]] == [BUSY, IDLE]
    busy, idle = desktops[BUSY], desktops[IDLE]
    assert busy["write_ops_per_second"] > 0
    assert busy["write_bytes_per_second"] >= 64 * KiB * busy["write_ops_per_second"] * 0.99
    assert busy["write_latency_seconds"] > 0
    assert idle["read_ops_per_second"] == 0 and idle["write_ops_per_second"] == 0
    assert idle["hit_ratio"] is None and idle["write_latency_seconds"] is None
    assert idle["overlay_ram_bytes"] == 64 * KiB
    (tpl,) = rates["templates"]
    assert tpl["path"] == TEMPLATE and tpl["read_ops_per_second"] > 0
    assert tpl["hit_ratio"] == 1.0
    (ds,) = rates["datastores"]
    assert ds["up"] is True
    assert ds["read_ops_per_second"] > 0 and ds["read_latency_seconds"] > 0
    assert ds["write_ops_per_second"] == 0  # desktop writes never reach the datastore


def read_until(fd, pred, what, timeout=30.0):
    data = b""
    deadline = time.monotonic() + timeout
    while not pred(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {data[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {what}; got {data[-2000:]!r}")
            data += chunk
    return data


def frames_of(data):
    """The frames drawn with the desktops table in them."""
    return [f for f in re.findall(rb"\x1b\[H(.*?)\x1b\[J", data, re.S) if b"DESKTOP " in f]


def test_live_view_redraws_on_a_terminal_and_q_quits(ws, host):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([cli_binary(host), "--socket", host.control_socket, "top",
                             "--interval", "200ms"], stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True, start_new_session=True)
    os.close(slave)
    try:
        with Load(ws):
            wait_counting(host)
            # Two whole frames drawn (each from "home" to "clear the rest").
            screen = read_until(master, lambda d: len(frames_of(d)) >= 2, "two frames")
        os.write(master, b"q")
        assert proc.wait(20) == 0
        rest = b""
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    break
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    text = screen.decode("utf-8", "replace")
    assert text.startswith("\x1b[?1049h"), "does not switch to the alternate screen"
    assert (screen + rest).rstrip().endswith(b"\x1b[?1049l"), "the terminal was not put back"
    last = [ANSI.sub("", line).rstrip("\r")
            for line in frames_of(screen)[-1].decode("utf-8", "replace").split("\n")]
    assert any(line.startswith(BUSY) for line in last), last
    assert all(len(line) <= 80 for line in last), last
    assert len([l for l in last if l]) <= 23, "more lines than the 24-line terminal shows"


def test_top_without_an_agent_exits_3_and_a_bad_interval_2(ws):
    cli = os.path.join(os.path.dirname(gcrig.default_binary()), "goldcache")
    sock = os.path.join(ws.root, "nobody.sock")
    r = subprocess.run([cli, "--socket", sock, "top", "--once"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 3, r
    assert "not running" in r.stderr
    r = subprocess.run([cli, "--socket", sock, "top", "--interval", "10ms"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r
