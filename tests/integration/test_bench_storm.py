"""bench/storm's smoke mode: two qemu-io desktops (a qcow2 linked clone and a
raw full clone) through goldcache over NFS (ganesha on loopback, +0.5 ms per
RPC), with the cache off, cold and warm, through boot, steady, AV sweep and
reboot.

Asserts only what must hold whatever the machine's speed: the report has
every column and a row for every run and phase, every desktop's reads were
checked and returned the bytes its disk holds (the template's, or its own
writes'), no IO failed, and nothing reached the datastore. No timing.
"""

import json
import os
import subprocess
import sys

import gcrig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import storm  # noqa: E402

PHASES = ["boot", "steady", "sweep", "reboot"]
MODES = ["off", "cold", "warm"]


def table_rows(text, first_header):
    """The rows (lists of cells) of the markdown table whose header starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| " + first_header))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows[0], rows[2:]


def test_storm_smoke_verifies_every_read_and_writes_nothing_to_the_filer(goldcached_bin,
                                                                         tmp_path):
    out = tmp_path / "storm"
    r = subprocess.run([os.path.join(REPO, "bench", "storm"), "--quick", "--n", "2",
                        "--out", str(out), "--workdir", "/tmp"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, GOLDCACHE_BIN=goldcached_bin))
    print(r.stdout[-6000:])
    print(r.stderr[-6000:], file=sys.stderr)
    assert r.returncode == 0, f"bench/storm --quick exited {r.returncode}"

    report = (out / "report.md").read_text()
    assert report.strip() in r.stdout, "the report printed is not the one written"
    header, rows = table_rows(report, "N | mode | phase")
    assert header == storm.PHASE_COLUMNS
    assert [(row[1], row[2]) for row in rows] == [(m, p) for m in MODES for p in PHASES]
    for row in rows:
        assert len(row) == len(header) and all(row), row
    header, rows = table_rows(report, "N | mode | wall")
    assert header == storm.RUN_COLUMNS
    assert [row[1] for row in rows] == MODES
    for row in rows:
        assert len(row) == len(header) and all(row), row
    assert "## Targets" in report and "PROBLEMS" not in report

    # Patch day: the unpublished patch, the published one, and a new host
    # booting the published generation; every read still verified.
    header, rows = table_rows(report, "N | run | phase")
    assert header == storm.PATCH_COLUMNS
    assert [row[1] for row in rows] == ["cold", "warm"] + [r[0] for r in storm.PATCH_RUNS]

    png = (out / "storm.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "results.json").read_text())
    assert [(x["summary"]["n"], x["summary"]["mode"]) for x in doc["results"]] == \
        [(2, m) for m in MODES]
    for res in doc["results"]:
        s = res["summary"]
        tag = f"N=2 {s['mode']}"
        # Nothing a nonpersistent desktop does reaches the datastore.
        assert s["filer_writes"] == {"bytes": 0, "ops": 0, "metadata": 0}, tag
        assert s["datastore_changed"] == [], tag
        for p in res["phases"]:
            assert p["filer_write_bytes"] == 0, (tag, p["phase"])
        # Both desktops ran, every read checked, none wrong, no IO failed.
        assert sorted(d["disk"] for d in s["desktops"].values()) == \
            ["pool/vm00.qcow2", "pool/vmraw0.img"], tag
        for i, d in s["desktops"].items():
            assert d["verify_failures"] == 0 and d["io_errors"] == 0 and d["missing"] == 0, \
                (tag, i, d)
            assert d["verified_bytes"] > 0.9 * d["read_bytes"] > 0, (tag, i, d)
            assert len(d["boot_s"]) == 2, (tag, i, d)
        for p in res["phases"]:
            assert p["reads"] > 0, (tag, p["phase"])
            assert p["verify_failures"] == 0 and p["io_errors"] == 0 and p["missing"] == 0, \
                (tag, p["phase"], p["problems"])
        assert s["agent_rc"] == 0, tag

    patch = {x["summary"]["mode"]: x for x in doc["env"]["patch_results"]}
    assert sorted(patch) == sorted(r[0] for r in storm.PATCH_RUNS)
    for mode, res in patch.items():
        s = res["summary"]
        assert s["filer_writes"] == {"bytes": 0, "ops": 0, "metadata": 0}, mode
        assert s["datastore_changed"] == [], mode
        assert s["verify_failures"] == 0 and s["io_errors"] == 0 and s["agent_rc"] == 0, mode
        assert all(p["reads"] > 0 for p in res["phases"]), mode
    # With the manifest the raw full clone is the template's content: a new
    # host's boot of both reads the filer for about one of them.
    cold = next(x for x in doc["results"] if x["summary"]["mode"] == "cold")
    cold_boot = next(p for p in cold["phases"] if p["phase"] == "boot")["filer_read_bytes"]
    assert patch["cold+manifest"]["phases"][0]["filer_read_bytes"] < 0.75 * cold_boot

    # The bench cleaned up after itself: its workspace is unmounted and gone.
    ws = [ln.split("workspace ", 1)[1].strip() for ln in r.stderr.splitlines()
          if ln.startswith("storm: workspace ")]
    assert len(ws) == 1, r.stderr[-2000:]
    assert not gcrig.mounts_under(ws[0]) and not os.path.exists(ws[0]), ws[0]
