"""The man pages in docs/man/ (hand-kept roff, their one source) say what the
binaries do:

- goldcached(8)'s OPTIONS are exactly the flags `goldcached --help` lists;
- goldcache(8)'s OPTIONS are exactly `goldcache --help`'s, its COMMANDS
  exactly the subcommands, and each command's options (and PATH argument)
  exactly what `goldcache COMMAND --help` lists;
- goldcache.toml(5) documents exactly the tables and keys the config parser
  knows (asked of goldcached itself: its error for an unknown key lists the
  known ones);
- each page renders with man(1) without a warning (as lintian checks).
"""

import os
import re
import subprocess

import pytest

import gcrig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAN = os.path.join(REPO, "docs", "man")
PAGES = ["goldcached.8", "goldcache.8", "goldcache.toml.5"]


def binaries():
    goldcached = gcrig.default_binary()
    goldcache = os.path.join(os.path.dirname(goldcached), "goldcache")
    for b in (goldcached, goldcache):
        if not os.access(b, os.X_OK):
            pytest.fail(f"{b} not built (./scripts/setup.sh)")
    return goldcached, goldcache


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


# ---------------------------------------------------------------------------
# --help (CLI11's format: an "Options:" block of "  -h,--help  text" lines)


def help_sections(text):
    """{"Options": [lines], "Subcommands": [lines], ...} of a --help text."""
    sections, current = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z][A-Za-z ]*):\s*", line)
        if m:
            current = sections.setdefault(m.group(1), [])
        elif current is not None and line.strip():
            current.append(line)
    return sections


def help_flags(text):
    flags = set()
    for line in help_sections(text).get("Options", []):
        m = re.match(r"\s+(-[^\s]+)", line)
        if m:
            flags |= {f for f in m.group(1).split(",") if f.startswith("-")}
    return flags


def help_positionals(text):
    return {line.split()[0] for line in help_sections(text).get("Positionals", [])}


def help_subcommands(text):
    return {line.split()[0] for line in help_sections(text).get("Subcommands", [])
            if re.match(r"\s{1,4}\w", line)}


# ---------------------------------------------------------------------------
# roff


def roff_plain(s):
    """A roff line's words: escapes and quotes gone, \\- as -."""
    s = s.replace("\\-", "-").replace("\\(aq", "'").replace("\\(dq", '"').replace("\\e", "\\")
    s = re.sub(r"\\f[BIRP]|\\&|\\\(.{2}", "", s)
    return s.replace('"', "")


def sections(page):
    """{section name: [roff lines]}."""
    with open(os.path.join(MAN, page), encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, current = {}, None
    for line in lines:
        if line.startswith(".SH "):
            current = out.setdefault(roff_plain(line[4:]).strip(), [])
        elif current is not None:
            current.append(line)
    return out


def tags(lines):
    """[(tag text, [nested tags])] of the .TP items at the top level of
    `lines`; items inside .RS/.RE are the nested tags of the item before."""
    out, depth, i = [], 0, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        elif line.startswith(".TP") and i + 1 < len(lines):
            text = roff_plain(re.sub(r"^\.(B|I|BR|BI|IR|RB|IB|RI)\s+", "", lines[i + 1]))
            if depth == 0:
                out.append((text, []))
            elif out:
                out[-1][1].append(text)
            i += 1
        i += 1
    return out


def flags_in(text):
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text))


# ---------------------------------------------------------------------------


def test_goldcached_page_lists_exactly_the_flags_of_its_help():
    goldcached, _ = binaries()
    r = run([goldcached, "--help"])
    assert r.returncode == 0, r.stderr
    want = help_flags(r.stdout)
    assert {"--config", "--datastore", "--help", "--version"} <= want, r.stdout
    documented = set()
    for tag, _ in tags(sections("goldcached.8")["OPTIONS"]):
        documented |= flags_in(tag)
    assert documented == want, (f"only in --help: {sorted(want - documented)}; "
                                f"only in goldcached(8): {sorted(documented - want)}")


def test_goldcache_page_lists_exactly_the_commands_and_options_of_its_help():
    _, goldcache = binaries()
    r = run([goldcache, "--help"])
    assert r.returncode == 0, r.stderr
    page = sections("goldcache.8")

    documented = set()
    for tag, _ in tags(page["OPTIONS"]):
        documented |= flags_in(tag)
    want = help_flags(r.stdout)
    assert documented == want, (f"only in --help: {sorted(want - documented)}; "
                                f"only in goldcache(8): {sorted(documented - want)}")

    commands = {tag.split()[0]: (tag, nested) for tag, nested in tags(page["COMMANDS"])}
    subcommands = help_subcommands(r.stdout)
    assert "top" in subcommands, r.stdout
    assert set(commands) == subcommands, (f"only in --help: {sorted(subcommands - set(commands))}; "
                                          f"only in goldcache(8): "
                                          f"{sorted(set(commands) - subcommands)}")
    for name, (tag, nested) in commands.items():
        sub = run([goldcache, name, "--help"])
        assert sub.returncode == 0, sub.stderr
        want = help_flags(sub.stdout) - {"-h", "--help"}
        in_tag = flags_in(tag)
        in_list = set().union(*(flags_in(t) for t in nested)) if nested else set()
        assert in_tag == want, f"goldcache(8) `{tag}`: {sorted(in_tag)} != --help {sorted(want)}"
        assert in_list == want, (f"goldcache(8) {name}'s option list: {sorted(in_list)} "
                                 f"!= --help {sorted(want)}")
        for positional in help_positionals(sub.stdout):
            assert positional in tag.split(), f"goldcache(8) `{tag}` does not show {positional}"


def known_config_keys(goldcached, tmp_path):
    """{table: {keys}} as goldcached's parser knows them: a file with an
    unknown key in every table makes it list the known ones."""
    config = tmp_path / "probe.toml"
    config.write_text(
        "zz_probe = 1\n"
        "[cache]\ndir = \"/nonexistent-cache\"\nzz_probe = 1\n"
        "[overlay]\nzz_probe = 1\n"
        "[[datastore]]\nname = \"ds1\"\nsource = \"/nonexistent\"\nmountpoint = \"/nonexistent-mnt\"\n"
        "zz_probe = 1\n"
        "[[datastore.rule]]\nmatch = \"t/**\"\nrole = \"template\"\nzz_probe = 1\n"
        "[stats]\nzz_probe = 1\n"
        "[control]\nzz_probe = 1\n"
        "[logging]\nzz_probe = 1\n")
    r = run([goldcached, "--check-config", "--config", str(config)])
    assert r.returncode == 1, r.stdout + r.stderr
    known = {}
    for line in r.stderr.splitlines():
        m = re.search(r"(?:(\[\[?[a-z.]+\]\]?) )?zz_probe: unknown (?:key|table)[^(]*\(known: ([^)]*)\)",
                      line)
        if m:
            known[m.group(1) or ""] = {k.strip() for k in m.group(2).split(",")}
    want = {"", "[cache]", "[overlay]", "[[datastore]]", "[[datastore.rule]]", "[stats]",
            "[control]", "[logging]"}
    assert set(known) == want, f"probe found {sorted(known)} in:\n{r.stderr}"
    return known


def test_goldcache_toml_page_documents_exactly_the_keys_the_parser_knows(tmp_path):
    goldcached, _ = binaries()
    known = known_config_keys(goldcached, tmp_path)
    page = sections("goldcache.toml.5")
    tables = {name for name in page if name.startswith("[")}
    top_level = {t.strip("[]") for t in tables if "." not in t}
    assert top_level == known[""], (f"tables in goldcache.toml(5): {sorted(top_level)}; "
                                    f"the parser's: {sorted(known[''])}")
    for table, keys in known.items():
        if not table:
            continue
        documented = {tag.split()[0] for tag, _ in tags(page[table])}
        assert documented == keys, (f"{table}: only in the parser: {sorted(keys - documented)}; "
                                    f"only in goldcache.toml(5): {sorted(documented - keys)}")
    assert sorted(tables) == sorted(t for t in known if t), \
        f"goldcache.toml(5) has sections {sorted(tables)}; the parser knows {sorted(known)}"


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page):
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    r = run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z",
             os.path.join(MAN, page)], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    name = page.rsplit(".", 1)[0]
    assert run(["man", "-l", os.path.join(MAN, page)], env=env).stdout.count(name) > 1
