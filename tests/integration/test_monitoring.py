"""The monitoring the package ships: packaging/grafana/goldcache.json (the
dashboard) and packaging/prometheus/alerts.yml (the alerting rules).

- `promtool check rules` passes on alerts.yml, and `promtool test rules` on
  its unit test alerts_test.yml (which alert fires when).
- Every query of the dashboard (and its variables and annotations) parses as
  PromQL: promtool checks them as recording rules, Grafana's variables
  replaced by values.
- Every metric the dashboard and the alerts name is one a real running agent
  exports on /metrics, after it has served a template and a desktop; and
  every label they match on or group by is one of that metric's labels, with
  the value they match where it is a literal. A typo in a metric or label
  name would be an empty panel or an alert that never fires; this catches it.

promtool is Debian's `prometheus` package (scripts/setup.sh installs it).
"""

import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import gcrig
from gcrig import MiB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(REPO, "packaging", "grafana", "goldcache.json")
ALERTS = os.path.join(REPO, "packaging", "prometheus", "alerts.yml")
ALERTS_TEST = os.path.join(REPO, "packaging", "prometheus", "alerts_test.yml")

# Labels Prometheus adds at scrape time, and `le` of histogram buckets.
SCRAPE_LABELS = {"instance", "job"}
# Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up"}
# What Grafana puts in for its variables before sending a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "$instance": ".+",
    "$datastore": ".+",
}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregations may have "by (...)" between their name and their "(".
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=|=)
  | (?P<punct>[(){},])
  | (?P<op>[-+*/%^<>]=?|==)
""", re.VERBOSE)


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed (Debian package prometheus; ./scripts/setup.sh)")
    return path


def grafana_to_promql(expr):
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    assert "$" not in expr, f"a Grafana variable this test does not know in: {expr}"
    return expr


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        assert m, f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}"
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def selectors(expr):
    """What a PromQL expression asks of the metrics:
    ([(metric, [(label, op, value)])], {labels it groups by}).
    Function and aggregation names are told apart by the "(" after them."""
    toks = tokens(expr)
    metrics, grouping = [], set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "name" and text in GROUPING:
            i += 1
            if i < len(toks) and toks[i] == ("punct", "("):
                i += 1
                while toks[i] != ("punct", ")"):
                    if toks[i][0] == "name":
                        grouping.add(toks[i][1])
                    i += 1
            i += 1
            continue
        if (kind == "name" and text.lower() not in PROMQL_KEYWORDS
                and text not in AGGREGATIONS and nxt != ("punct", "(")):
            matchers = []
            if nxt == ("punct", "{"):
                i += 2
                while toks[i] != ("punct", "}"):
                    if toks[i][0] == "name":
                        label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
                        matchers.append((label, op, json.loads(value)))
                        i += 3
                    else:
                        i += 1  # a comma
            metrics.append((text, matchers))
        i += 1
    return metrics, grouping


def dashboard_queries(dashboard):
    """Every PromQL query of the dashboard: panels' targets (also inside
    rows), variables, annotations. {where: expr}."""
    out = {}

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            out[f"panel {p['title']!r} {t['refId']}"] = t["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", q)
            assert m, f"variable {v['name']}: not label_values(SELECTOR, LABEL): {q}"
            out[f"variable {v['name']}"] = m.group(1)
            out[f"variable {v['name']} label"] = f"count by ({m.group(2)}) ({m.group(1)})"
    for a in dashboard["annotations"]["list"]:
        if "expr" in a:
            out[f"annotation {a['name']!r}"] = a["expr"]
    return out


def alert_queries():
    import yaml  # python3-yaml (scripts/setup.sh)

    with open(ALERTS) as f:
        rules = yaml.safe_load(f)
    return {f"alert {r['alert']}": r["expr"] for g in rules["groups"] for r in g["rules"]}


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def test_promtool_checks_and_unit_tests_the_alerting_rules():
    r = subprocess.run([promtool(), "check", "rules", ALERTS], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout
    r = subprocess.run([promtool(), "test", "rules", os.path.basename(ALERTS_TEST)],
                       cwd=os.path.dirname(ALERTS_TEST), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_dashboard_query_is_valid_promql():
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    queries = dashboard_queries(dashboard)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels), "a panel without a query"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(queries.values())]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(rules, f)  # JSON is YAML
        path = f.name
    try:
        r = subprocess.run([promtool(), "check", "rules", path], capture_output=True, text=True,
                           timeout=120)
    finally:
        os.unlink(path)
    named = "\n".join(f"query{i}: {where}" for i, where in enumerate(queries))
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{named}"


def busy_agent(ws, make_template):
    """An agent that served a template (misses, then hits) and holds a
    desktop's writes, so the per-template and per-desktop series exist."""
    t = make_template("templates/t.img", 4 * MiB, seed=21)
    gcrig.write_file(ws.ds("pool/vm1.img"), gcrig.random_bytes(4 * MiB, 22))
    agent = ws.agent(cache_size="64MiB", extra_args=["--reset", "manual"]).start()
    for what in ("miss", "hit"):
        gcrig.assert_same_content(gcrig.read_all_direct(t.mnt_path, t.size), t.data, what)
    fd = os.open(ws.mnt("pool/vm1.img"), os.O_RDWR)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        assert os.pread(fd, 65536, 0) == b"x" * 65536
    finally:
        os.close(fd)  # --reset manual: the desktop and its series stay
    return agent


def test_dashboard_and_alerts_name_only_what_a_running_agent_exports(ws, make_template):
    agent = busy_agent(ws, make_template)
    exported = gcrig.parse_metrics(agent.get("/metrics").decode("utf-8"))
    labels_of = {}  # sample name -> [label dicts]
    for name, labels, _ in exported.samples:
        labels_of.setdefault(name, []).append(labels)
    # The families this test must see for the check to mean anything.
    for must in ("goldcache_template_read_bytes_total", "goldcache_desktop_overlay_bytes",
                 "goldcache_datastore_read_latency_seconds_bucket"):
        assert must in labels_of, f"/metrics has no {must}: {sorted(labels_of)}"

    queries = dashboard_queries(load_dashboard())
    queries.update(alert_queries())
    problems = []
    for where, expr in queries.items():
        metrics, grouping = selectors(grafana_to_promql(expr))
        if not metrics:
            problems.append(f"{where}: names no metric: {expr}")
        known_labels = set(SCRAPE_LABELS) | {"le"}
        for name, matchers in metrics:
            if name in PROMETHEUS_SERIES:
                continue
            series = labels_of.get(name)
            if series is None:
                problems.append(f"{where}: {name} is not on /metrics")
                continue
            names = {k for s in series for k in s}
            known_labels |= names
            for label, op, value in matchers:
                if label in SCRAPE_LABELS:
                    continue
                if label not in names:
                    problems.append(f"{where}: {name} has no label {label} (it has {sorted(names)})")
                elif op == "=" and not any(s.get(label) == value for s in series):
                    problems.append(f"{where}: no {name}{{{label}=\"{value}\"}} on /metrics "
                                    f"(values: {sorted({s.get(label) for s in series})})")
        for label in grouping - known_labels:
            problems.append(f"{where}: groups by {label}, a label none of its metrics has")
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_a_misspelt_metric_or_label():
    # The checker itself: what it must see in a wrong query.
    metrics, grouping = selectors(
        'sum by (instance, sorce) (rate(goldcache_read_byte_total{source="cach"}[5m])) / '
        'histogram_quantile(0.99, sum by (le) (rate(goldcache_read_latency_seconds_bucket[5m])))')
    assert metrics == [("goldcache_read_byte_total", [("source", "=", "cach")]),
                       ("goldcache_read_latency_seconds_bucket", [])]
    assert grouping == {"instance", "sorce", "le"}
