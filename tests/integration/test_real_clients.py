"""Real clients of the mount: qemu-img and qemu-io with cache=none (O_DIRECT)."""

import re
import shutil

import pytest

import gcrig
from gcrig import KiB, MiB

SIZE = 64 * MiB
PATTERN = 0xAB
PATTERN_BYTES = 4 * MiB  # the template starts with 4 MiB of 0xab, then random data


run = gcrig.run_tool


def qemu_io(path, *commands):
    return gcrig.qemu_io(path, *commands, fmt="raw", readonly=True)


def parse_hexdump(output):
    """Bytes by offset from qemu-io `read -v` output ('0000fffa:  ab ab ...  text')."""
    got = {}
    for line in output.splitlines():
        m = re.match(r"^([0-9a-f]{8,16}):\s+((?:[0-9a-f]{2}\s)*[0-9a-f]{2})(?:\s\s|$)", line)
        if not m:
            continue
        base = int(m.group(1), 16)
        for i, h in enumerate(m.group(2).split()):
            got[base + i] = int(h, 16)
    return got


@pytest.fixture
def clients(ws, make_template):
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not installed (package qemu-utils)")
    data = bytes([PATTERN]) * PATTERN_BYTES + gcrig.random_bytes(SIZE - PATTERN_BYTES, seed=51)
    t = make_template("templates/t.img", data=data)
    agent = ws.agent().start()
    return ws, t, agent


def test_qemu_img_compare_of_mount_and_datastore_is_identical(clients):
    ws, t, agent = clients
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", t.mnt_path, t.ds_path])
    assert r.returncode == 0, r.stdout
    assert "Images are identical" in r.stdout


def test_qemu_img_compare_detects_a_different_image(clients):
    # Proves the comparison above can fail: one flipped byte is found.
    ws, t, agent = clients
    other = ws.ds("other.img")
    changed = bytearray(t.data)
    changed[5 * MiB + 123] ^= 0xFF
    gcrig.write_file(other, bytes(changed))
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", t.mnt_path, other])
    assert r.returncode == 1, r.stdout
    assert "Content mismatch at offset" in r.stdout


@pytest.mark.parametrize("offset,length", [
    (0, MiB),
    (0, PATTERN_BYTES),
    (12345, 100_000),                 # unaligned, inside the first chunk
    (MiB - 700, 1400),                # crosses a 1 MiB chunk boundary, unaligned
    (3 * MiB + 4095, 512 * KiB + 3),  # unaligned start and length
])
def test_qemu_io_odirect_pattern_read_matches(clients, offset, length):
    ws, t, agent = clients
    r = qemu_io(t.mnt_path, f"read -P 0x{PATTERN:x} {offset} {length}")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout
    assert f"read {length}/{length} bytes at offset {offset}" in r.stdout, r.stdout


def test_qemu_io_pattern_check_fails_on_random_region(clients):
    # Proves the pattern checks above can fail.
    ws, t, agent = clients
    r = qemu_io(t.mnt_path, f"read -P 0x{PATTERN:x} {8 * MiB} {64 * KiB}")
    assert r.returncode != 0
    assert "Pattern verification failed" in r.stdout, r.stdout


@pytest.mark.parametrize("offset,length", [
    (PATTERN_BYTES - 40, 80),         # the 0xab/random edge
    (MiB - 9, 33),                    # chunk boundary
    (17 * MiB + 1, 300),
    (SIZE - 100, 100),                # the last bytes of the template
])
def test_qemu_io_odirect_hexdump_matches_source(clients, offset, length):
    ws, t, agent = clients
    r = qemu_io(t.mnt_path, f"read -v {offset} {length}")
    assert r.returncode == 0, r.stdout
    got = parse_hexdump(r.stdout)
    want = {offset + i: b for i, b in enumerate(t.data[offset:offset + length])}
    assert got == want, r.stdout


def test_qemu_io_many_small_direct_reads_across_the_template(clients):
    ws, t, agent = clients
    cmds = []
    for i in range(0, SIZE // MiB, 3):
        off = i * MiB + (i * 4097) % MiB
        if off + 4 * KiB <= PATTERN_BYTES:
            cmds.append(f"read -P 0x{PATTERN:x} {off} {4 * KiB}")
        else:
            cmds.append(f"read -v {off} 64")
    r = qemu_io(t.mnt_path, *cmds)
    assert r.returncode == 0, r.stdout
    got = parse_hexdump(r.stdout)
    assert got and all(t.data[o] == b for o, b in got.items())
