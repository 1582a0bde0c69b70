"""A real agent against clients that misbehave: a control request nested
100,000 deep (it used to overflow a thread's stack while being logged), idle
and trickling (slowloris) connections to the stats endpoint, and a cache dir
that other users must not be able to read. Each time the agent keeps
serving, counts what happened in goldcache_errors_total and logs it."""

import json
import os
import socket
import stat
import threading
import time

import gcrig
from gcrig import MiB

TEMPLATE = "templates/t.img"


def control_exchange(agent, payload: bytes, timeout: float = 30.0) -> bytes:
    """Sends raw bytes to the agent's control socket; returns its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(agent.control_socket)
        s.sendall(payload)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


def test_deeply_nested_control_request_is_refused_and_the_agent_keeps_serving(ws, make_template):
    t = make_template(TEMPLATE, 2 * MiB, seed=5)
    agent = ws.agent().start()
    depth = 100_000
    payload = b'{"command":"warm","path":' + b"[" * depth + b"]" * depth + b"}\n"
    answer = json.loads(control_exchange(agent, payload))
    assert answer["ok"] is False
    assert answer["code"] == "bad-request"
    assert "nested deeper than" in answer["error"]
    assert agent.running(), "the agent died on a deep request:\n" + agent.log_tail()
    assert agent.metrics().value("goldcache_errors_total", kind="control_bad_request") == 1
    assert "refused a request from uid 0" in agent.log_tail(200)
    # Still serving: commands and reads.
    assert json.loads(agent.cli("status", "--json").stdout)
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "read after")


class Trickler(threading.Thread):
    """Starts an HTTP request and sends one more header byte every 100 ms."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        self.stop = threading.Event()
        self.cut = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                self.sock.sendall(b"a")
                self.sock.settimeout(0.1)
                try:
                    if self.sock.recv(1) == b"":
                        break
                except socket.timeout:
                    continue
        except OSError:
            pass
        if not self.stop.is_set():
            self.cut.set()

    def close(self):
        self.stop.set()
        self.join(30)
        self.sock.close()


def test_metrics_answer_while_idle_and_trickling_clients_hold_connections(ws, make_template):
    make_template(TEMPLATE, 1 * MiB, seed=6)
    agent = ws.agent().start()
    idle = [socket.create_connection(("127.0.0.1", agent.port), timeout=30) for _ in range(4)]
    tricklers = [Trickler(agent.port) for _ in range(4)]
    for tr in tricklers:
        tr.start()
    try:
        # Answered at once, with connections held; the bound is generous.
        m = gcrig.parse_metrics(agent.get("/metrics", timeout=20).decode("utf-8"))
        assert "goldcache_cache_hits_total" in m.names()
        # The trickling requests are cut at their deadline, and counted.
        wait_for(lambda: all(tr.cut.is_set() for tr in tricklers), 60, "cutting the tricklers")
        agent.wait_metric("goldcache_errors_total", lambda v: v == 4, kind="stats_slow_client")
        assert "stats_slow_client" in agent.log_tail(200)
    finally:
        for tr in tricklers:
            tr.close()
        for s in idle:
            s.close()


def test_the_cache_dir_is_owner_only(ws, make_template):
    t = make_template(TEMPLATE, 2 * MiB, seed=7)
    # A cache dir an older agent (or an operator's mkdir) left open to all.
    os.makedirs(ws.cache_dir, exist_ok=True)
    os.chmod(ws.cache_dir, 0o755)
    agent = ws.agent().start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "read")
    agent.wait_index_durable()
    open_to_others = []
    for root, dirs, files in os.walk(ws.cache_dir):
        for name in [root] + [os.path.join(root, f) for f in files + dirs]:
            st = os.lstat(name)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                open_to_others.append(f"{name} {stat.S_IMODE(st.st_mode):04o}")
    assert open_to_others == []
    assert stat.S_IMODE(os.stat(ws.cache_dir).st_mode) == 0o700
    assert os.path.exists(os.path.join(ws.cache_dir, "index", "CURRENT"))
    assert agent.metrics().value("goldcache_errors_total", kind="cache_permissions") == 1
