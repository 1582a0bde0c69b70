"""The `goldcache` CLI against a running agent: every command, warm before a
boot storm (0 datastore bytes), --rate, --pin against a scan, evict, check
over a corrupted cache, reset, the agent not running, and a non-root user
refused by the control socket."""

import json
import os
import random
import re
import shutil
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gcrig
from gcrig import KiB, MiB

TEMPLATE = "templates/t.img"
DESKTOP = "pool/vm1.img"
PROGRESS_LINE = re.compile(r"^warm: (\d+) % \(")


def cli_binary(agent):
    return os.path.join(os.path.dirname(agent.binary), "goldcache")


def cli_json(agent, *args):
    r = agent.cli(*args, "--json")
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"goldcache {' '.join(args)} --json printed no JSON:\n{r.stdout}")


def templates(agent):
    return {t["path"]: t for t in cli_json(agent, "list")["templates"]}


def cached(agent, rel):
    t = templates(agent).get(rel)
    return t["cached_bytes"] if t else 0


def ds_read_bytes(agent):
    return agent.metrics().value("goldcache_datastore_read_bytes_total")


def progress_percents(stderr):
    """The percentages of `warm`'s non-TTY progress lines, in order."""
    return [int(m.group(1)) for m in map(PROGRESS_LINE.match, stderr.splitlines()) if m]


def storm(path, data, readers):
    """Concurrent O_DIRECT readers; returns {reader: [bad offsets]}."""
    barrier = threading.Barrier(len(readers))

    def run(reader):
        name, block = reader
        order = gcrig.block_orders(len(data) // block, seed=9)[name]
        barrier.wait(60)
        return name, gcrig.read_compare(path, data, order, block)

    with ThreadPoolExecutor(len(readers)) as ex:
        return dict(ex.map(run, readers))


def write_desktop(path, data, offset=0):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_status_stats_and_list_show_templates_and_desktops(ws, make_template):
    t = make_template(TEMPLATE, 8 * MiB, seed=31)
    gcrig.write_file(ws.ds(DESKTOP), gcrig.random_bytes(4 * MiB, 32))
    agent = ws.agent(extra_args=["--reset", "manual"]).start()
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "template")
    write_desktop(ws.mnt(DESKTOP), b"w" * (256 * KiB))

    r = agent.cli("status")
    assert ws.mountpoint in r.stdout and "cache_used_bytes" in r.stdout, r.stdout
    status = cli_json(agent, "status")
    assert status["cache_used_bytes"] == agent.metrics().value("goldcache_cache_used_bytes")
    assert [d["mountpoint"] for d in status["datastores"]] == [ws.mountpoint]
    assert json.loads(agent.cli("--json", "status").stdout)["version"] == status["version"]

    r = agent.cli("list")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert any(TEMPLATE in row for row in rows), f"no template row in `list`:\n{r.stdout}"
    assert any(DESKTOP in row for row in rows), f"no desktop row in `list`:\n{r.stdout}"
    listed = cli_json(agent, "list")
    tpl = {x["path"]: x for x in listed["templates"]}[TEMPLATE]
    assert (tpl["size_bytes"], tpl["cached_bytes"]) == (t.size, t.size)
    desk = {x["path"]: x for x in listed["desktops"]}[DESKTOP]
    assert desk["overlay_ram_bytes"] + desk["overlay_disk_bytes"] == 256 * KiB

    # A person gets the summary (per datastore, cache, templates, desktops,
    # offload); every raw metric comes with --json.
    r = agent.cli("stats")
    for want in (TEMPLATE, DESKTOP, "hit_ratio", "offload_ratio", "checksum_failures",
                 "evictions"):
        assert want in r.stdout, f"`stats` does not show {want}:\n{r.stdout[:2000]}"
    assert "goldcache_cache_hits_total" not in r.stdout, "raw metrics belong to --json"
    stats = cli_json(agent, "stats")
    assert "goldcache_cache_hits_total" in json.dumps(stats["metrics"])
    assert stats["cache"]["misses"] == agent.metrics().value("goldcache_cache_misses_total")
    assert 0.0 <= stats["offload_ratio"] <= 1.0
    assert {x["path"] for x in stats["templates"]} == {TEMPLATE}
    assert {x["path"] for x in stats["desktops"]} == {DESKTOP}
    assert "goldcache_datastore_read_bytes_total" in stats["metrics"]


def test_warm_shows_progress_then_a_storm_reads_nothing_from_the_datastore(ws, make_template):
    t = make_template(TEMPLATE, 64 * MiB, seed=33)
    agent = ws.agent(cache_size="256MiB").start()
    before = ds_read_bytes(agent)

    r = agent.cli("warm", t.mnt_path)  # stderr is a pipe: progress lines, no bar
    percents = progress_percents(r.stderr)
    assert percents and percents[-1] == 100, f"no progress ending at 100 %:\n{r.stderr}"
    assert percents == sorted(percents), r.stderr
    assert "\r" not in r.stderr and "\033[" not in r.stderr, "terminal bar drawn on a pipe"
    assert TEMPLATE in r.stdout, r.stdout
    assert cached(agent, TEMPLATE) == t.size
    assert ds_read_bytes(agent) - before == t.size

    m0 = agent.metrics()
    readers = [("sequential", MiB), ("reverse", MiB), ("random", 256 * KiB), ("strided7", MiB)]
    bad = storm(t.mnt_path, t.data, readers)
    assert not {k: v[:5] for k, v in bad.items() if v}, "readers saw wrong bytes"
    m1 = agent.metrics()
    for name in ("goldcache_datastore_read_bytes_total", "goldcache_datastore_read_ops_total"):
        assert m1.value(name) == m0.value(name), f"{name} moved during the storm after warm"
    assert (m1.value("goldcache_read_bytes_total", source="cache")
            - m0.value("goldcache_read_bytes_total", source="cache")) == len(readers) * t.size


def test_warm_rate_limit_is_respected(ws, make_template):
    u = make_template("templates/u.img", 32 * MiB, seed=34)
    agent = ws.agent(cache_size="256MiB").start()
    before = ds_read_bytes(agent)
    start = time.monotonic()
    r = agent.cli("warm", "--rate", "32MiB", u.mnt_path)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.9, f"32 MiB warmed at --rate 32MiB in {elapsed:.2f} s"
    assert ds_read_bytes(agent) - before == u.size
    percents = progress_percents(r.stderr)
    assert len(percents) >= 3 and percents[-1] == 100, f"progress:\n{r.stderr}"

    for bad in ("0", "fast", "-5MiB"):
        r = agent.cli("warm", "--rate", bad, u.mnt_path, check=False)
        assert r.returncode == 2 and "--rate" in r.stderr, (bad, r.returncode, r.stderr)


def test_pinned_template_survives_a_scan_bigger_than_the_cache(ws, make_template):
    p = make_template("templates/pinned.img", 32 * MiB, seed=35)
    u = make_template("templates/unpinned.img", 16 * MiB, seed=36)
    s = make_template("templates/scan.img", 128 * MiB, seed=37)
    agent = ws.agent(cache_size="96MiB").start()

    res = json.loads(agent.cli("warm", "--pin", p.mnt_path, "--json").stdout)
    assert res["bytes"] == p.size and "pinned_generation" in res, res
    agent.cli("warm", u.mnt_path)
    assert cached(agent, p.rel) == p.size and cached(agent, u.rel) == u.size

    evictions = agent.metrics().value("goldcache_cache_evictions_total")
    # In random order: a sequential sweep would only evict its own chunks
    # (scan resistance); this one competes with the unpinned template.
    order = gcrig.block_orders(s.size // MiB, seed=38)["random"]
    assert not gcrig.read_compare(s.mnt_path, s.data, order, MiB), "scan read wrong bytes"
    assert agent.metrics().value("goldcache_cache_evictions_total") > evictions
    assert cached(agent, u.rel) < u.size, \
        "the scan evicted nothing of the unpinned template: it proves nothing about the pin"
    assert cached(agent, p.rel) == p.size, "the scan evicted chunks of the pinned template"

    before = ds_read_bytes(agent)
    gcrig.assert_same_content(gcrig.read_all_direct(p.mnt_path, p.size), p.data, "pinned re-read")
    assert ds_read_bytes(agent) == before, "re-reading the pinned template read the datastore"


def test_evict_drops_cached_bytes_and_next_read_goes_to_the_datastore(ws, make_template):
    t = make_template(TEMPLATE, 16 * MiB, seed=38)
    agent = ws.agent(cache_size="256MiB").start()
    agent.cli("warm", "--pin", t.mnt_path)
    assert cached(agent, TEMPLATE) == t.size
    m0 = agent.metrics()

    res = cli_json(agent, "evict", t.mnt_path)
    assert res["evicted_bytes"] == t.size, res
    assert cached(agent, TEMPLATE) == 0
    m1 = agent.metrics()
    assert m0.value("goldcache_cache_used_bytes") - m1.value("goldcache_cache_used_bytes") == t.size
    assert (m1.value("goldcache_cache_evictions_total")
            - m0.value("goldcache_cache_evictions_total")) == t.size // MiB

    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "after evict")
    assert ds_read_bytes(agent) - m1.value("goldcache_datastore_read_bytes_total") == t.size

    r = agent.cli("evict", "/etc/passwd", check=False)
    assert r.returncode == 1 and r.stderr.strip(), (r.returncode, r.stderr)


def flip_one_byte_per_chunk(path, chunk, count, seed):
    """XORs one byte of data in `count` distinct used chunk slots of store.dat."""
    rnd = random.Random(seed)
    stride, data_at = gcrig.store_slot_layout(chunk)
    fd = os.open(path, os.O_RDWR)
    try:
        slots = [i for i in range(os.fstat(fd).st_size // stride)
                 if any(os.pread(fd, 4 * KiB, i * stride + data_at))]
        assert len(slots) >= count, f"{path}: only {len(slots)} used slots"
        for slot in rnd.sample(slots, count):
            off = slot * stride + data_at + rnd.randrange(4 * KiB)
            os.pwrite(fd, bytes([os.pread(fd, 1, off)[0] ^ 0xFF]), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_check_reports_zero_on_a_healthy_cache_and_drops_corrupted_chunks(ws, make_template):
    t = make_template(TEMPLATE, 16 * MiB, seed=39)
    agent = ws.agent(cache_size="256MiB").start()
    agent.cli("warm", t.mnt_path)
    agent.wait_index_durable()

    healthy = cli_json(agent, "check")
    assert healthy == {"checked_chunks": 16, "checked_bytes": t.size, "bad_chunks_dropped": 0}, healthy
    assert "bad_chunks_dropped" in agent.cli("check").stdout

    flip_one_byte_per_chunk(os.path.join(ws.cache_dir, gcrig.STORE_FILE), MiB, 3, seed=40)
    report = cli_json(agent, "check")
    assert 1 <= report["bad_chunks_dropped"] <= 3, report
    bad = report["bad_chunks_dropped"]
    assert cached(agent, TEMPLATE) == t.size - bad * MiB

    before = ds_read_bytes(agent)
    gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, "after check")
    assert ds_read_bytes(agent) - before == bad * MiB, "only the dropped chunks are refetched"
    assert cli_json(agent, "check")["bad_chunks_dropped"] == 0


def test_reset_discards_a_desktops_overlay(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=41)
    pristine = gcrig.random_bytes(4 * MiB, 42)
    gcrig.write_file(ws.ds(DESKTOP), pristine)
    agent = ws.agent(extra_args=["--reset", "manual"]).start()
    path = ws.mnt(DESKTOP)
    written = gcrig.random_bytes(MiB, 43)

    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, written, 0)
        os.fsync(fd)
        r = agent.cli("reset", path, check=False)
        assert r.returncode == 1 and "--force" in r.stderr, \
            f"reset of an open desktop: exit {r.returncode}, {r.stderr}"
        assert os.pread(fd, MiB, 0) == written, "a refused reset discarded the overlay"
    finally:
        os.close(fd)
    assert gcrig.read_all_direct(path, MiB) == written, "--reset manual: close kept nothing"

    resets = agent.metrics().value("goldcache_desktop_resets_total", reason="command")
    agent.cli("reset", path)
    assert agent.metrics().value("goldcache_desktop_resets_total", reason="command") == resets + 1
    gcrig.assert_same_content(gcrig.read_all_direct(path, len(pristine)), pristine, "after reset")
    desk = {d["path"]: d for d in cli_json(agent, "list")["desktops"]}.get(DESKTOP)
    assert desk is None or desk["overlay_ram_bytes"] + desk["overlay_disk_bytes"] == 0, desk
    assert gcrig.sha256_file(ws.ds(DESKTOP)) == gcrig.sha256_file(ws.mnt(DESKTOP))

    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, written, 0)
        os.fsync(fd)
        agent.cli("reset", "--force", path)
    finally:
        os.close(fd)
    gcrig.assert_same_content(gcrig.read_all_direct(path, len(pristine)), pristine, "after --force")


def test_cli_says_agent_not_running_with_exit_3(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=44)
    agent = ws.agent().start()
    agent.cli("status")
    assert agent.stop() == 0
    for args in (["status"], ["list", "--json"], ["warm", ws.mnt(TEMPLATE)], ["check"]):
        r = agent.cli(*args, check=False)
        assert r.returncode == 3, f"goldcache {args} with the agent stopped: exit {r.returncode}"
        assert "goldcached is not running" in r.stderr, r.stderr

    # Killed: its socket file stays behind, nobody listens.
    agent.start()
    agent.kill9()
    assert os.path.exists(agent.control_socket)
    r = agent.cli("status", check=False)
    assert r.returncode == 3 and "goldcached is not running" in r.stderr, (r.returncode, r.stderr)


def run_as(user, argv):
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=60)


def test_non_root_user_is_refused_by_the_control_socket(ws, make_template):
    t = make_template(TEMPLATE, 8 * MiB, seed=45)
    agent = ws.agent().start()
    user = f"gc-test-{random.randrange(10**6):06d}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    user], check=True, capture_output=True, timeout=60)
    try:
        os.chmod(ws.root, 0o711)  # traversable; the socket's own mode decides
        # The build tree may sit where other users cannot reach (/root is
        # 0700): the user runs its own copy of the CLI from the workspace.
        binary = os.path.join(ws.root, "goldcache")
        shutil.copy2(cli_binary(agent), binary)
        os.chmod(binary, 0o755)
        cli = [binary, "--socket", agent.control_socket]
        ok = run_as(user, [binary, "--version"])
        assert ok.returncode == 0, f"{user} cannot run the CLI at all: {ok.stderr}"

        r = run_as(user, cli + ["status"])
        assert r.returncode != 0 and r.returncode != 3, (r.returncode, r.stderr)
        assert "permission denied" in r.stderr.lower(), r.stderr

        # A socket made world-writable by mistake: the agent's peer
        # credential check still refuses, a state-changing command included.
        mode = stat.S_IMODE(os.stat(agent.control_socket).st_mode)
        os.chmod(agent.control_socket, 0o666)
        try:
            for args in (["status"], ["warm", t.mnt_path]):
                r = run_as(user, cli + args)
                assert r.returncode == 1, (args, r.returncode, r.stderr)
                assert "permission denied" in r.stderr.lower(), r.stderr
        finally:
            os.chmod(agent.control_socket, mode)
        assert cached(agent, TEMPLATE) == 0, "the refused warm ran anyway"
        with open(agent.log_path, encoding="utf-8", errors="replace") as f:
            assert re.search(r"refused uid \d+", f.read()), "agent did not log the refusal"
        agent.cli("status")  # root still may
    finally:
        subprocess.run(["userdel", user], capture_output=True, timeout=60)
