"""goldcached --config FILE: the shipped packaging/goldcache.toml, adapted to
a workspace, starts an agent that serves; --check-config accepts it; flags
override the file; each bad config stops goldcached (and --check-config) with
a message naming the problem and FILE:LINE."""

import errno
import json
import os
import re
import socket

import pytest

import gcrig
from gcrig import MiB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "packaging", "goldcache.toml")
TEMPLATE = "templates/t.img"


def set_key(lines, key, value, nth=0):
    """Replaces the value of the nth uncommented `key = ...` line; returns its
    1-based line number."""
    hits = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(key)}\s*=", line)]
    assert len(hits) > nth, f"{SHIPPED} has no line {nth} setting {key}"
    lines[hits[nth]] = f"{key} = {value}"
    return hits[nth] + 1


def line_of(lines, key, nth=0):
    hits = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(key)}\s*=", line)]
    return hits[nth] + 1


def shipped_config(ws, *, cache_dir=None, socket_path, port, mountpoint=None):
    """The shipped config's lines with this workspace's paths."""
    with open(SHIPPED, encoding="utf-8") as f:
        lines = f.read().splitlines()
    set_key(lines, "dir", f'"{cache_dir or ws.cache_dir}"')
    set_key(lines, "size", '"256MiB"')
    set_key(lines, "source", f'"{ws.datastore}"')
    set_key(lines, "mountpoint", f'"{mountpoint or ws.mountpoint}"')
    set_key(lines, "listen", f'"127.0.0.1:{port}"')
    set_key(lines, "socket", f'"{socket_path}"')
    return lines


def write_config(ws, lines, name="goldcache.toml"):
    path = os.path.join(ws.root, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_shipped_config_adapted_starts_the_agent_and_serves(ws, make_template):
    t = make_template(TEMPLATE, 8 * MiB, seed=51)
    gcrig.write_file(ws.ds("pool/vm1.img"), gcrig.random_bytes(MiB, 52))
    port = gcrig.free_port()
    agent = ws.agent(port=port)
    path = write_config(ws, shipped_config(ws, socket_path=agent.control_socket, port=port))
    agent.config = path
    agent.start()

    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "template")
    m = agent.metrics()
    assert gcrig.local_budget(m) == 256 * MiB, "[cache] size not applied"
    assert m.value("goldcache_datastore_read_bytes_total") == t.size
    # The file's rules: templates/** is a template (read-only), pool/** nonpersistent.
    with pytest.raises(OSError) as e:
        os.open(t.mnt_path, os.O_WRONLY)
    assert e.value.errno == errno.EROFS
    fd = os.open(ws.mnt("pool/vm1.img"), os.O_RDWR)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert gcrig.datastore_writes(agent.metrics()) == gcrig.NO_DATASTORE_WRITES
    out = agent.cli("status", "--json").stdout
    assert ws.mountpoint in out and "ds1" in out, out  # [[datastore]] name = "ds1"
    assert agent.stop() == 0
    assert not gcrig.is_mounted(ws.mountpoint)


def test_command_line_flags_override_the_file(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=53)
    file_port, flag_port = gcrig.free_port(), gcrig.free_port()
    agent = ws.agent(port=flag_port,
                     extra_args=["--stats-listen", f"127.0.0.1:{flag_port}", "--cache-size", "128MiB"])
    agent.config = write_config(ws, shipped_config(ws, socket_path=agent.control_socket,
                                                   port=file_port))
    agent.start()
    assert gcrig.local_budget(agent.metrics()) == 128 * MiB
    assert not port_open(file_port), "the file's [stats] listen was used despite --stats-listen"


def check_config(agent, path):
    return gcrig.run_to_exit([agent.binary, "--check-config", "--config", path])


def test_check_config_accepts_a_good_file_and_starts_nothing(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=54)
    port = gcrig.free_port()
    agent = ws.agent(port=port)
    path = write_config(ws, shipped_config(ws, socket_path=agent.control_socket, port=port))
    r = check_config(agent, path)
    assert r.returncode == 0, f"--check-config refused a good file:\n{r.stdout}"
    assert not gcrig.is_mounted(ws.mountpoint)
    assert not os.path.exists(agent.control_socket)
    assert not port_open(port)


def test_check_config_passes_while_the_configured_agent_runs(ws, make_template):
    """The documented routine: check the changed file, then restart. The
    running agent holds the mountpoint, socket and port at check time."""
    make_template(TEMPLATE, 4 * MiB, seed=55)
    port = gcrig.free_port()
    agent = ws.agent(port=port)
    agent.config = write_config(ws, shipped_config(ws, socket_path=agent.control_socket, port=port))
    agent.start()
    r = check_config(agent, agent.config)
    assert r.returncode == 0, f"--check-config failed because the agent itself runs:\n{r.stdout}"
    assert gcrig.is_mounted(ws.mountpoint) and agent.running()
    agent.cli("status")


# Each bad config: (id, change(lines, ws) -> (bad line, words the message must hold)).
def syntax_error(lines, ws):
    n = line_of(lines, "size")
    lines[n - 1] = 'size = "256MiB'  # unterminated string
    return n, ["syntax"]


def unknown_key(lines, ws):
    n = set_key(lines, "ram_host", '"4GiB"')
    lines[n - 1] = 'ram_hots = "4GiB"'
    return n, ["ram_hots"]


def bad_size(lines, ws):
    return set_key(lines, "size", '"200GB2"'), ["200GB2", "size"]


def missing_datastore_dir(lines, ws):
    missing = os.path.join(ws.root, "no-such-datastore")
    return set_key(lines, "source", f'"{missing}"'), [missing]


def unknown_role(lines, ws):
    return set_key(lines, "role", '"golden"', nth=1), ["golden", "role"]


BAD = [syntax_error, unknown_key, bad_size, missing_datastore_dir, unknown_role]


@pytest.mark.parametrize("mode", ["start", "check-config"])
@pytest.mark.parametrize("change", BAD, ids=[f.__name__ for f in BAD])
def test_bad_config_names_the_problem_and_its_line(ws, make_template, change, mode):
    make_template(TEMPLATE, 4 * MiB, seed=56)
    port = gcrig.free_port()
    agent = ws.agent(port=port)
    lines = shipped_config(ws, socket_path=agent.control_socket, port=port)
    line, words = change(lines, ws)
    path = write_config(ws, lines)
    if mode == "start":
        r = gcrig.run_to_exit([agent.binary, "--config", path])
    else:
        r = check_config(agent, path)
    where = f"{path}:{line}:"
    assert r.returncode != 0, f"{mode} accepted a config with a {change.__name__}:\n{r.stdout}"
    assert where in r.stdout, f"the message does not say {where}\n{r.stdout}"
    msg = next(l for l in r.stdout.splitlines() if where in l)
    for w in words:
        assert w.lower() in msg.lower(), f"the message at {where} does not name {w!r}:\n{r.stdout}"
    assert not gcrig.is_mounted(ws.mountpoint)
    assert not os.path.exists(agent.control_socket)


def test_mountpoint_in_use_names_the_line_and_leaves_the_live_mount_alone(ws, make_template):
    t = make_template(TEMPLATE, 4 * MiB, seed=57)
    first = ws.agent().start()  # serves ws.mountpoint
    port = gcrig.free_port()
    sock = os.path.join(ws.root, "second.sock")
    cache_b = os.path.join(ws.root, "cache-b")
    lines = shipped_config(ws, cache_dir=cache_b, socket_path=sock, port=port)
    line = line_of(lines, "mountpoint")
    path = write_config(ws, lines, "second.toml")

    r = gcrig.run_to_exit([first.binary, "--config", path])
    where = f"{path}:{line}:"
    assert r.returncode != 0, f"a second agent started on a live mountpoint:\n{r.stdout}"
    assert where in r.stdout, f"the message does not say {where}\n{r.stdout}"
    msg = next(l for l in r.stdout.splitlines() if where in l)
    assert "mountpoint" in msg and ws.mountpoint in msg, msg
    assert not os.path.exists(sock)
    # The first agent's mount was not taken for a stale one and detached.
    assert first.running() and gcrig.is_mounted(ws.mountpoint)
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "first agent")
    first.cli("status")


def test_two_datastores_share_one_cache_each_on_its_own_mount(ws, make_template):
    """One agent, two datastores (two filers): each is mounted and served with
    its own rules and counters; both fill the one cache; SIGTERM unmounts both."""
    t = make_template(TEMPLATE, 8 * MiB, seed=61)
    second = os.path.join(ws.root, "datastore2")
    os.makedirs(os.path.join(second, "gold"))
    data2 = gcrig.random_bytes(4 * MiB, 62)
    gcrig.write_file(os.path.join(second, "gold", "w10.img"), data2)
    mnt2 = os.path.join(ws.root, "mnt2")  # not created: the agent makes mountpoints
    port = gcrig.free_port()
    agent = ws.agent(port=port)
    lines = shipped_config(ws, socket_path=agent.control_socket, port=port)
    lines += ["", "[[datastore]]", 'name = "ds2"', f'source = "{second}"',
              f'mountpoint = "{mnt2}"', "", "[[datastore.rule]]", 'match = "gold/**"',
              'role = "template"']
    agent.config = write_config(ws, lines)
    agent.start()
    try:
        assert gcrig.is_mounted(mnt2), "the second datastore is not mounted"
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "ds1")
        path2 = os.path.join(mnt2, "gold", "w10.img")
        gcrig.assert_same_content(gcrig.read_all_direct(path2, len(data2)), data2, "ds2")
        with pytest.raises(OSError) as e:  # ds2's own rule makes it a template
            os.open(path2, os.O_WRONLY)
        assert e.value.errno == errno.EROFS
        m = agent.metrics()
        assert m.value("goldcache_datastore_read_bytes_total", datastore="ds1") == t.size
        assert m.value("goldcache_datastore_read_bytes_total", datastore="ds2") == len(data2)
        assert m.value("goldcache_cache_used_bytes") == t.size + len(data2)  # one cache
        status = json.loads(agent.cli("status", "--json").stdout)
        assert [d["name"] for d in status["datastores"]] == ["ds1", "ds2"]
        # Both read again: all from the one cache.
        gcrig.read_all_direct(path2, len(data2))
        gcrig.read_all_direct(t.mnt_path, t.size)
        assert agent.metrics().value("goldcache_datastore_read_bytes_total") == t.size + len(data2)
    finally:
        assert agent.stop() == 0
    assert not gcrig.is_mounted(ws.mountpoint) and not gcrig.is_mounted(mnt2)
