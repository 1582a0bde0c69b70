"""A TCP proxy that adds a fixed latency to every client->server message.

For the NFS benchmarks: put it in front of nfs-ganesha's NFS port on loopback
to give each RPC a round trip like a filer's across a network (loopback's is
~0.05 ms; a filer's READ is typically 0.3-1 ms). Bytes the client sends are
forwarded DELAY after they arrived, in order (a pure latency, as netem would
add: requests that arrive together leave together, they do not queue behind
each other's delay); the server's replies pass straight through. This kernel
has no sch_netem, and changing the shared loopback would disturb other runs.

  python3 bench/delayproxy.py TARGET_PORT DELAY_US

listens on a free loopback port, prints it on stdout, and serves until killed.
"""

import collections
import socket
import sys
import threading
import time

HOST = "127.0.0.1"


def pump_delayed(src, dst, delay_s):
    q = collections.deque()
    cv = threading.Condition()
    done = []

    def sender():
        while True:
            with cv:
                while not q and not done:
                    cv.wait()
                if not q:
                    break
                due, data = q.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        shut(dst)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    while True:
        try:
            data = src.recv(1 << 20)
        except OSError:
            data = b""
        with cv:
            if not data:
                done.append(True)
            else:
                q.append((time.monotonic() + delay_s, data))
            cv.notify()
        if not data:
            break
    t.join()


def pump(src, dst):
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while True:
        try:
            n = src.recv_into(buf)
        except OSError:
            n = 0
        if not n:
            break
        try:
            dst.sendall(view[:n])
        except OSError:
            break
    shut(dst)


def shut(s):
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(conn, target_port, delay_s):
    try:
        upstream = socket.create_connection((HOST, target_port))
    except OSError:
        conn.close()
        return
    for s in (conn, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
    back.start()
    pump_delayed(conn, upstream, delay_s)
    back.join()
    conn.close()
    upstream.close()


def main():
    target_port, delay_us = int(sys.argv[1]), float(sys.argv[2])
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(64)
    print(lsock.getsockname()[1], flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn, target_port, delay_us / 1e6),
                         daemon=True).start()


if __name__ == "__main__":
    main()
