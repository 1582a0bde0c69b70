"""The .deb: CPack builds it from the build tree; `lintian` finds no error in
it; it installs with `dpkg -i` on this machine, making the cache directory
0700 and the runtime directory 0755; the installed `goldcached --version`
runs; the man pages are where man(1) finds them; the installed unit passes
`systemd-analyze verify` and sets a negative OOMScoreAdjust; `dpkg -r`
removes it and keeps the config.

The package is always purged at the end, whatever failed, and the test refuses
to run (fails, never skips) where goldcache is already installed: it must not
replace or remove someone's real installation.

The build tree is the one $GOLDCACHE_BIN lives in (build/agent/goldcached ->
build/), or $GOLDCACHE_BUILD_DIR. CPack writes the package and its staging
files to a temp directory, never into the build tree.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

import gcrig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "goldcache"
CONFIG = "/etc/goldcache/goldcache.toml"
TOOLS = {
    "cpack": "cmake",
    "dpkg-deb": "dpkg",
    "dpkg-shlibdeps": "dpkg-dev",
    "systemd-analyze": "systemd",
    "lintian": "lintian",
    "man": "man-db",
}
CACHE_DIR = "/var/lib/goldcache"
RUN_DIR = "/run/goldcache"
MAN_PAGES = ["/usr/share/man/man8/goldcached.8.gz", "/usr/share/man/man8/goldcache.8.gz",
             "/usr/share/man/man5/goldcache.toml.5.gz"]


def build_dir():
    if os.environ.get("GOLDCACHE_BUILD_DIR"):
        return os.environ["GOLDCACHE_BUILD_DIR"]
    # <build>/agent/goldcached
    return os.path.dirname(os.path.dirname(os.path.abspath(gcrig.default_binary())))


def run(args, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {r.returncode}\n"
                    f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}")
    return r


def package_state():
    """dpkg's status of the package ("install ok installed", "deinstall ok
    config-files", ...), or None when dpkg knows nothing of it."""
    r = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


@pytest.fixture(scope="module")
def deb():
    if os.geteuid() != 0:
        pytest.fail("the packaging test installs a .deb: run it as root")
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        pytest.fail("missing: " + ", ".join(missing) + "; ./scripts/setup.sh installs them")
    config = os.path.join(build_dir(), "CPackConfig.cmake")
    if not os.path.isfile(config):
        pytest.fail(f"{config} does not exist: configure and build first (./scripts/setup.sh)")
    out = tempfile.mkdtemp(prefix="goldcache-deb.")
    try:
        run(["cpack", "-G", "DEB", "-B", out, "--config", config], cwd=build_dir())
        debs = [f for f in os.listdir(out) if f.endswith(".deb")]
        assert len(debs) == 1, f"cpack made {debs} in {out}"
        yield os.path.join(out, debs[0])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def field(deb_path, name):
    return run(["dpkg-deb", "-f", deb_path, name]).stdout.strip()


def test_deb_holds_binaries_unit_config_and_docs(deb):
    assert field(deb, "Package") == PACKAGE
    depends = [d.strip().split(" ")[0] for d in field(deb, "Depends").split(",")]
    # fuse3 by hand; the shared libraries computed by dpkg-shlibdeps.
    assert "fuse3" in depends, depends
    assert "libfuse3-3" in depends and "libc6" in depends, depends

    files = set()
    for line in run(["dpkg-deb", "-c", deb]).stdout.splitlines():
        path = line.split()[5]
        files.add(path[1:] if path.startswith("./") else path)
    for want in ["/usr/bin/goldcached", "/usr/bin/goldcache",
                 "/usr/lib/systemd/system/goldcached.service", CONFIG,
                 "/usr/share/doc/goldcache/README.md",
                 "/usr/share/doc/goldcache/operations.md",
                 "/usr/share/doc/goldcache/metrics.md",
                 "/usr/share/doc/goldcache/troubleshooting.md",
                 "/usr/share/doc/goldcache/architecture.md",
                 "/usr/share/doc/goldcache/design.md",
                 "/usr/share/doc/goldcache/copyright",
                 "/usr/share/doc/goldcache/changelog.gz",
                 "/usr/lib/tmpfiles.d/goldcache.conf",
                 "/usr/share/goldcache/grafana/goldcache.json",
                 "/usr/share/goldcache/prometheus/alerts.yml"] + MAN_PAGES:
        assert want in files, f"{want} not in the package: {sorted(files)}"

    conffiles = run(["dpkg-deb", "-I", deb, "conffiles"]).stdout.split()
    assert conffiles == [CONFIG]


def test_lintian_finds_no_errors(deb):
    # Errors fail the run; warnings and info are shown when something fails.
    r = run(["lintian", "--fail-on", "error", "--display-info", "--no-tag-display-limit", deb],
            check=False)
    errors = [line for line in r.stdout.splitlines() if line.startswith("E:")]
    assert r.returncode == 0 and not errors, f"lintian exit {r.returncode}:\n{r.stdout}{r.stderr}"


def test_changelog_is_of_the_packaged_version(deb):
    with open(os.path.join(REPO, "packaging", "debian", "changelog")) as f:
        first = f.readline()
    assert first.startswith(f"{PACKAGE} ({field(deb, 'Version')}) "), first


def mode(path):
    return oct(os.stat(path).st_mode & 0o7777)


def test_installs_runs_verifies_and_removes(deb):
    before = package_state()
    if before is not None and "not-installed" not in before:
        pytest.fail(f"{PACKAGE} is already known to dpkg here ({before}); this test would "
                    f"replace and then purge it: remove it first (dpkg --purge {PACKAGE})")
    # A cache directory an operator made by hand with the usual 0755 gets the
    # package's 0700; one that is someone else's here is left as it is found
    # (but must be 0700 after the install all the same).
    made = [d for d in (CACHE_DIR, RUN_DIR) if not os.path.exists(d)]
    if CACHE_DIR in made:
        os.mkdir(CACHE_DIR, 0o755)
        os.chmod(CACHE_DIR, 0o755)
    try:
        run(["dpkg", "-i", deb])
        assert package_state() == "install ok installed"
        assert mode(CACHE_DIR) == "0o700", f"{CACHE_DIR} is {mode(CACHE_DIR)} after the install"
        assert mode(RUN_DIR) == "0o755", f"{RUN_DIR} is {mode(RUN_DIR)} after the install"
        for page, (section, name) in zip(MAN_PAGES, [("8", "goldcached"), ("8", "goldcache"),
                                                     ("5", "goldcache.toml")]):
            assert run(["man", "-w", section, name]).stdout.strip() == page

        version = field(deb, "Version")
        r = run(["/usr/bin/goldcached", "--version"])
        assert version in r.stdout, r.stdout
        r = run(["/usr/bin/goldcache", "--version"])
        assert version in r.stdout, r.stdout

        with open(CONFIG) as got, open(os.path.join(REPO, "packaging", "goldcache.toml")) as want:
            assert got.read() == want.read()

        listed = run(["dpkg", "-L", PACKAGE]).stdout.split()
        units = [p for p in listed if p.endswith("/systemd/system/goldcached.service")]
        assert len(units) == 1, listed
        r = run(["systemd-analyze", "verify", units[0]], check=False)
        output = r.stdout + r.stderr
        assert r.returncode == 0, output
        # Unknown or misspelt directives are only warnings (exit 0): none allowed.
        assert "goldcached.service" not in output, output
        # The kernel's OOM killer must take a desktop (one VM) before the agent
        # serving all of them, without making the agent unkillable (-1000).
        with open(units[0]) as f:
            oom = [line.split("=", 1)[1].strip() for line in f
                   if line.startswith("OOMScoreAdjust=")]
        assert len(oom) == 1 and -1000 < int(oom[0]) < 0, oom

        run(["dpkg", "-r", PACKAGE])
        assert package_state() == "deinstall ok config-files"
        for gone in ["/usr/bin/goldcached", "/usr/bin/goldcache", units[0]]:
            assert not os.path.exists(gone), f"{gone} left after dpkg -r"
        assert os.path.exists(CONFIG), "dpkg -r must keep the conffile"
    finally:
        if package_state() is not None:
            run(["dpkg", "--purge", PACKAGE], check=False)
        after = package_state()
        for d in made:  # the package keeps them on purge; the test made them
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
        assert after is None or "not-installed" in after, f"{PACKAGE} still known to dpkg: {after}"
        assert not os.path.exists(CONFIG), f"{CONFIG} left after dpkg --purge"
