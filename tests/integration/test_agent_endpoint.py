"""The statistics endpoint: /metrics in the Prometheus text format with the
names of docs/design.md §5 (parsed by Debian's python3-prometheus-client),
/stats as JSON that agrees with /metrics, /healthz, read-only, loopback
unless allowed."""

import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import gcrig
from gcrig import MiB

TEMPLATE = "templates/t.img"
DESKTOP = "pool/vm1.img"
DESKTOP_WRITE = 4 * MiB  # with --overlay-ram 1MiB: part RAM, part disk tier

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def busy_agent(ws, make_template):
    """An agent that has served template reads (from the datastore, then from
    the cache) and kept a desktop's writes in both overlay tiers."""
    t = make_template(TEMPLATE, 16 * MiB, seed=11)
    gcrig.write_file(ws.ds(DESKTOP), gcrig.random_bytes(8 * MiB, 12))
    agent = ws.agent(cache_size="256MiB",
                     extra_args=["--reset", "manual", "--overlay-ram", "1MiB"]).start()
    for what in ("first read (datastore)", "second read (cache)"):
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, what)
    written = gcrig.random_bytes(DESKTOP_WRITE, 13)
    fd = os.open(ws.mnt(DESKTOP), os.O_RDWR)
    try:
        os.pwrite(fd, written, 0)
        os.fsync(fd)
        assert os.pread(fd, DESKTOP_WRITE, 0) == written
    finally:
        os.close(fd)  # --reset manual: the overlay stays
    gcrig.assert_same_content(gcrig.read_all_direct(ws.mnt(DESKTOP), DESKTOP_WRITE), written,
                              "desktop read back (overlay)")
    return agent, t


def scrape(agent):
    return agent.get("/metrics").decode("utf-8")


def exact_samples(text):
    """{(sample name, frozenset of labels): value} of one scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def test_metrics_parse_with_help_type_and_design_names(ws, make_template):
    agent, t = busy_agent(ws, make_template)
    text = scrape(agent)

    families = list(text_string_to_metric_families(text))  # raises on a malformed line
    assert families, "no metric families in /metrics"
    for f in families:
        assert f.documentation.strip(), f"{f.name}: no HELP text"
        assert f.type in ("counter", "gauge", "histogram"), f"{f.name}: TYPE is {f.type!r}"

    # The same on the raw text: every sample belongs to a family that has
    # exactly one HELP and one TYPE line, written before its samples.
    helps, types, order_problems = {}, {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"two HELP lines for {name}"
            helps[name] = line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            family = name
            if name not in types:
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                        family = name[:-len(suffix)]
            if family not in types or family not in helps:
                order_problems.append(line)
    assert not order_problems, f"samples without a HELP and TYPE before them: {order_problems[:5]}"
    assert set(helps) == set(types), f"HELP without TYPE or back: {set(helps) ^ set(types)}"

    m = gcrig.parse_metrics(text)
    for source in ("cache", "overlay", "datastore"):
        assert m.value("goldcache_read_bytes_total", source=source) > 0, source
    # A sequential first read waits on the datastore for its first chunks;
    # readahead serves the rest (those count as cache).
    assert m.value("goldcache_read_bytes_total", source="datastore") + \
        m.value("goldcache_read_bytes_total", source="cache") >= 2 * t.size
    assert m.value("goldcache_read_bytes_total", source="overlay") >= DESKTOP_WRITE
    assert m.value("goldcache_datastore_read_bytes_total") >= t.size
    assert m.value("goldcache_datastore_read_ops_total") > 0
    assert m.value("goldcache_datastore_write_bytes_total") == 0, "desktop writes reached the datastore"
    assert m.value("goldcache_cache_hits_total") > 0
    assert m.value("goldcache_cache_misses_total") > 0
    assert m.value("goldcache_cache_used_bytes") >= t.size
    assert m.value("goldcache_cache_capacity_bytes") > 0
    ram = m.value("goldcache_overlay_bytes", tier="ram")
    disk = m.value("goldcache_overlay_bytes", tier="disk")
    assert disk > 0, "4 MiB written with --overlay-ram 1MiB: nothing in the disk tier"
    assert ram + disk == DESKTOP_WRITE, f"overlay ram {ram} + disk {disk} != {DESKTOP_WRITE} written"
    for kind in ("read", "stale_generation", "local_store", "overlay_io"):
        assert m.value("goldcache_errors_total", kind=kind) == 0, kind
    for name in ("goldcache_read_latency_seconds_bucket", "goldcache_read_latency_seconds_sum",
                 "goldcache_read_latency_seconds_count"):
        for source in ("cache", "datastore"):
            m.value(name, source=source)  # KeyError if missing
    for source in ("cache", "datastore"):
        assert m.value("goldcache_read_latency_seconds_count", source=source) > 0, source


def test_histograms_are_cumulative_and_inf_bucket_equals_count(ws, make_template):
    agent, _ = busy_agent(ws, make_template)
    histograms = [f for f in text_string_to_metric_families(scrape(agent)) if f.type == "histogram"]
    names = {f.name for f in histograms}
    assert {"goldcache_read_latency_seconds", "goldcache_datastore_read_latency_seconds"} <= names

    for f in histograms:
        series = {}
        for s in f.samples:
            key = frozenset((k, v) for k, v in s.labels.items() if k != "le")
            series.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if s.name == f.name + "_bucket":
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name == f.name + "_sum":
                series[key]["sum"] = s.value
            elif s.name == f.name + "_count":
                series[key]["count"] = s.value
        assert series, f"{f.name}: no series"
        for key, h in series.items():
            where = f"{f.name}{dict(key)}"
            assert h["sum"] is not None and h["count"] is not None, f"{where}: no _sum or _count"
            bounds = [le for le, _ in h["buckets"]]
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), \
                f"{where}: bucket bounds out of order: {bounds}"
            assert bounds and bounds[-1] == float("inf"), f"{where}: no +Inf bucket"
            counts = [c for _, c in h["buckets"]]
            assert all(a <= b for a, b in zip(counts, counts[1:])), \
                f"{where}: buckets not cumulative: {counts}"
            assert counts[-1] == h["count"], f"{where}: +Inf bucket {counts[-1]} != _count {h['count']}"
            assert h["sum"] >= 0
            if h["count"] == 0:
                assert h["sum"] == 0, f"{where}: _sum {h['sum']} with _count 0"


def stats_values(stats):
    """/stats "metrics" as {(sample name, frozenset of labels): value}, named
    like the Prometheus samples."""
    out, types = {}, {}
    for name, family in stats["metrics"].items():
        types[name] = family["type"]
        for child in family["metrics"]:
            labels = {k: str(v) for k, v in child["labels"].items()}
            if family["type"] == "histogram":
                out[(name + "_count", frozenset(labels.items()))] = child["count"]
                out[(name + "_sum", frozenset(labels.items()))] = child["sum"]
                for b in child["buckets"]:
                    le = b["le"]
                    key = dict(labels, le=le)
                    out[(name + "_bucket", frozenset(key.items()))] = b["count"]
            else:
                out[(name, frozenset(labels.items()))] = child["value"]
    return out, types


def norm_le(samples):
    """Buckets' le as floats on both sides ("5e-05" vs 5e-05, "+Inf")."""
    out = {}
    for (name, labels), v in samples.items():
        labels = frozenset((k, float(v) if k == "le" else v) for k, v in labels)
        out[(name, labels)] = v
    return out


def check_stats_between(before, stats, after, only_counters=False):
    """Every number of /stats "metrics" lies between the two scrapes taken
    around it; returns the problems."""
    values, types = stats_values(stats)
    values, before, after = norm_le(values), norm_le(before), norm_le(after)
    problems = []
    for key, v in values.items():
        name, labels = key
        family = name if name in types else next(
            f for f in types if types[f] == "histogram" and name in (f + s for s in HISTOGRAM_SUFFIXES))
        kind = types[family]
        if key not in before or key not in after:
            problems.append(f"{name}{dict(labels)} is in /stats but not in /metrics")
            continue
        a, b = before[key], after[key]
        if kind == "gauge":
            if only_counters:
                continue
            if v is None:
                problems.append(f"{name}{dict(labels)}: null in /stats, {a} in /metrics")
            elif not min(a, b) <= v <= max(a, b):
                problems.append(f"gauge {name}{dict(labels)}: /stats {v}, /metrics {a} then {b}")
        elif not (a - 1e-9 <= v <= b + 1e-9):
            problems.append(f"{kind} {name}{dict(labels)}: /stats {v} not within /metrics {a}..{b}")
    missing = {k for k in before if k not in values}
    if missing:
        problems.append(f"in /metrics but not in /stats: {sorted(str(k) for k in missing)[:5]}")
    return problems


def named_gauges(m):
    return {
        "cache_used_bytes": m.value("goldcache_cache_used_bytes"),
        "cache_capacity_bytes": m.value("goldcache_cache_capacity_bytes"),
        "overlay_ram_bytes": m.value("goldcache_overlay_bytes", tier="ram"),
        "overlay_disk_bytes": m.value("goldcache_overlay_bytes", tier="disk"),
    }


def test_stats_json_agrees_with_metrics_when_idle(ws, make_template):
    agent, t = busy_agent(ws, make_template)
    agent.wait_index_durable()

    text1 = scrape(agent)
    stats = json.loads(agent.get("/stats"))  # raises if not valid JSON
    text2 = scrape(agent)
    m1, m2 = gcrig.parse_metrics(text1), gcrig.parse_metrics(text2)

    problems = check_stats_between(exact_samples(text1), stats, exact_samples(text2))
    assert not problems, "\n".join(problems)

    gauges = named_gauges(m1)
    assert gauges == named_gauges(m2), "gauges moved while the agent was idle"
    for key, want in gauges.items():
        assert stats[key] == want, f"/stats {key} = {stats[key]}, /metrics says {want}"
    for name in ("goldcache_datastore_read_bytes_total", "goldcache_datastore_read_ops_total",
                 "goldcache_datastore_write_bytes_total"):
        got = stats["metrics"][name]["metrics"][0]["value"]
        assert m1.value(name) <= got <= m2.value(name), f"{name}: /stats {got}"

    templates = {x["path"]: x for x in stats["templates"]}
    assert templates[TEMPLATE]["size_bytes"] == t.size
    assert templates[TEMPLATE]["cached_bytes"] == t.size
    desktops = {x["path"]: x for x in stats["desktops"]}
    d = desktops[DESKTOP]
    assert d["overlay_ram_bytes"] == gauges["overlay_ram_bytes"]
    assert d["overlay_disk_bytes"] == gauges["overlay_disk_bytes"]
    assert d["open_handles"] == 0
    mounts = [x["mountpoint"] for x in stats["datastores"]]
    assert mounts == [ws.mountpoint], f"/stats datastores: {stats['datastores']}"


def test_stats_json_agrees_with_metrics_while_counters_move(ws, make_template):
    agent, t = busy_agent(ws, make_template)
    stop = threading.Event()
    errors = []

    def reader():
        try:
            with gcrig.DirectReader(t.mnt_path, MiB) as r:
                off = 0
                while not stop.is_set():
                    if r.pread(off, MiB) != t.data[off:off + MiB]:
                        errors.append(off)
                    off = (off + MiB) % t.size
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    th = threading.Thread(target=reader)
    th.start()
    try:
        gcrig.wait_until(lambda: agent.metrics().value("goldcache_cache_hits_total") > 32,
                         "the background reader hits the cache")
        # Every round is checked; rounds go on until three of them saw the
        # counters move between their two scrapes (else they prove little).
        moved, rounds = 0, 0
        while moved < 3:
            rounds += 1
            assert rounds <= 200, f"counters moved in only {moved} of 200 rounds"
            text1 = scrape(agent)
            stats = json.loads(agent.get("/stats"))
            text2 = scrape(agent)
            m1, m2 = gcrig.parse_metrics(text1), gcrig.parse_metrics(text2)
            problems = check_stats_between(exact_samples(text1), stats, exact_samples(text2),
                                           only_counters=True)
            assert not problems, "\n".join(problems)
            for key, want in named_gauges(m1).items():
                assert stats[key] == want == named_gauges(m2)[key], key
            if (m2.value("goldcache_read_bytes_total", source="cache")
                    > m1.value("goldcache_read_bytes_total", source="cache")):
                moved += 1
    finally:
        stop.set()
        th.join(60)
    assert not errors, f"background reader: {errors[:5]}"


def http(agent, method, path):
    req = urllib.request.Request(agent.url(path), method=method,
                                 data=b"x=1" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_healthz_ok_and_endpoint_is_read_only(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=14)
    agent = ws.agent().start()
    status, body, _ = http(agent, "GET", "/healthz")
    assert (status, body.strip()) == (200, b"ok")

    for method, path in (("POST", "/metrics"), ("PUT", "/stats"), ("DELETE", "/metrics"),
                         ("POST", "/healthz"), ("POST", "/nonexistent")):
        status, body, headers = http(agent, method, path)
        assert status == 405, f"{method} {path} -> {status} {body[:200]!r}"
        assert "GET" in headers.get("Allow", ""), f"{method} {path}: Allow header {headers}"
    status, _, _ = http(agent, "GET", "/nonexistent")
    assert status == 404
    gcrig.parse_metrics(scrape(agent))  # still serving


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_refuses_non_loopback_listen_without_explicit_setting(ws, make_template, host):
    make_template(TEMPLATE, 4 * MiB, seed=15)
    agent = ws.agent(stats_host=host)
    agent.port = gcrig.free_port()
    r = gcrig.run_to_exit(agent.argv())
    assert r.returncode != 0, f"goldcached listened on {host}:{agent.port} without the setting:\n{r.stdout}"
    assert "--stats-allow-non-loopback" in r.stdout, \
        f"the refusal does not name the setting that allows it:\n{r.stdout}"
    assert not gcrig.is_mounted(ws.mountpoint)
    assert not os.path.exists(agent.control_socket), "control socket left behind"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", agent.port), timeout=2).close()


def listening_on_any(port):
    """True if /proc/net/tcp shows a listener on 0.0.0.0:port."""
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"00000000:{port:04X}" and fields[3] == "0A":
                return True
    return False


def test_accepts_non_loopback_listen_with_explicit_setting(ws, make_template):
    make_template(TEMPLATE, 4 * MiB, seed=16)
    agent = ws.agent(stats_host="0.0.0.0", extra_args=["--stats-allow-non-loopback"]).start()
    assert listening_on_any(agent.port), f"not listening on 0.0.0.0:{agent.port}"
    status, body, _ = http(agent, "GET", "/healthz")  # via 127.0.0.1 only
    assert (status, body.strip()) == (200, b"ok")
    gcrig.parse_metrics(scrape(agent))
    assert agent.stop() == 0
