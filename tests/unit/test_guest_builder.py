"""The hand-written newc cpio writer (the initramfs format)."""
from __future__ import annotations

import stat
import shutil
import subprocess

import pytest

from cowfleet.guest.builder import INITRAMFS_INIT, READY_MARKER, VIRTIO_MODULES, GUEST_INIT, _cpio_newc

D = stat.S_IFDIR | 0o755
F = stat.S_IFREG | 0o644
X = stat.S_IFREG | 0o755

FILES = {
    "bin": (D, b""),
    "bin/busybox": (X, b"\x7fELF" + bytes(range(256)) * 3 + b"xyz"),   # odd length: padding
    "init": (X, b"#!/bin/sh\necho hi\n"),
    "lib": (D, b""),
    "lib/modules": (D, b""),
    "lib/modules/a.ko": (F, b"a"),
    "lib/modules/bb.ko": (F, b"bb"),
    "lib/modules/ccc.ko": (F, b"ccc"),
    "lib/modules/dddd.ko": (F, b"dddd"),
    "empty": (F, b""),
    "newroot": (D, b""),
}


def parse_newc(data: bytes) -> list[dict]:
    """A strict independent reader: every header, name and data at 4-byte alignment."""
    entries, pos = [], 0
    while True:
        assert pos % 4 == 0
        hdr = data[pos:pos + 110]
        assert hdr[:6] == b"070701", (pos, hdr[:6])
        fields = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, _, _, namesize, check = fields
        name_raw = data[pos + 110:pos + 110 + namesize]
        assert name_raw.endswith(b"\0") and b"\0" not in name_raw[:-1]
        name = name_raw[:-1].decode()
        pos += 110 + namesize
        pos += (-pos) % 4
        body = data[pos:pos + size]
        assert len(body) == size
        pos += size
        pad = (-pos) % 4
        assert data[pos:pos + pad] == b"\0" * pad
        pos += pad
        entries.append(dict(name=name, ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink,
                            size=size, data=body, check=check))
        if name == "TRAILER!!!":
            assert pos == len(data), "nothing may follow the trailer"
            return entries


def test_parse_headers_and_contents():
    entries = parse_newc(_cpio_newc(FILES))
    assert entries[-1]["name"] == "TRAILER!!!"
    assert entries[-1]["size"] == 0
    body = {e["name"]: e for e in entries[:-1]}
    assert set(body) == set(FILES)
    for name, (mode, data) in FILES.items():
        assert body[name]["mode"] == mode, name
        assert body[name]["data"] == data, name
        assert body[name]["uid"] == body[name]["gid"] == 0
        assert body[name]["check"] == 0
    inos = [e["ino"] for e in entries[:-1]]
    assert len(set(inos)) == len(inos) and 0 not in inos


def test_directories_come_before_their_contents():
    names = [e["name"] for e in parse_newc(_cpio_newc(FILES))]
    for i, name in enumerate(names):
        if "/" in name:
            parent = name.rsplit("/", 1)[0]
            assert parent in names[:i], (parent, name)


def test_empty_archive_is_just_the_trailer():
    entries = parse_newc(_cpio_newc({}))
    assert [e["name"] for e in entries] == ["TRAILER!!!"]


@pytest.mark.parametrize("length", range(0, 9))
def test_every_data_padding(length):
    files = {"f" * (length + 1): (F, b"x" * length)}
    entries = parse_newc(_cpio_newc(files))
    assert entries[0]["data"] == b"x" * length


def test_non_ascii_name_size_counts_bytes():
    entries = parse_newc(_cpio_newc({"é-ü": (F, b"1")}))
    assert entries[0]["name"] == "é-ü"
    assert entries[0]["data"] == b"1"


def test_extract_with_cpio(tmp_path):
    archive = tmp_path / "initrd.cpio"
    archive.write_bytes(_cpio_newc(FILES))
    out = tmp_path / "out"
    out.mkdir()
    with open(archive, "rb") as fh:
        proc = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], stdin=fh,
                              cwd=out, capture_output=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "TRAILER!!!").exists()
    extracted = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert extracted == set(FILES)
    for name, (mode, data) in FILES.items():
        p = out / name
        st = p.lstat()
        assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(mode), name
        if stat.S_ISREG(mode):
            assert p.read_bytes() == data, name
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(mode), name


def test_cpio_lists_the_archive_as_newc(tmp_path):
    archive = tmp_path / "x.cpio"
    archive.write_bytes(_cpio_newc({"init": (X, b"#!/bin/sh\n")}))
    with open(archive, "rb") as fh:
        proc = subprocess.run(["cpio", "-it", "-H", "newc", "--quiet"], stdin=fh,
                              capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["init"]


def test_templates_format():
    init = INITRAMFS_INIT.format(modules=" ".join(VIRTIO_MODULES))
    assert "for m in virtio_ring virtio " in init
    assert "${arg#root=}" in init
    # the host's entropy (domain.py's virtio-rng): its driver after the virtio core it needs
    assert VIRTIO_MODULES.index("virtio-rng") > VIRTIO_MODULES.index("virtio_ring")
    guest = GUEST_INIT.replace("{marker}", READY_MARKER)
    assert f"echo \"{READY_MARKER} instance=${{iid:-$id}}" in guest
    # the NoCloud contract: the seed by label, the NIC by MAC, user-data run, a page on :80,
    # and the readiness line only after all of that
    for step in ("findfs LABEL=cidata", "macaddress:", "ip addr add", "/run/user-data", "httpd -p 80"):
        assert step in guest
        assert guest.index(step) < guest.index(READY_MARKER)
    # a raw string: the shell's escapes reach the guest as written
    assert '${v#\\"}' in guest and "\x01" not in guest
    # and busybox's shell parses it (the guest's own shell: an error there is a guest that never boots)
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is a build dependency of the demo image"
    proc = subprocess.run([busybox, "sh", "-n", "-c", guest], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr


def test_the_guest_kernel_skips_the_io_apic_timer_check():
    """A TCG guest on a loaded host misses the kernel's early timer check and
    panics ("IO-APIC + timer doesn't work!") on every boot: the demo guest's
    kernel line turns the check off (cowfleet/guest/builder.py)."""
    from cowfleet.guest.builder import SYSLINUX_CFG
    append = next(line.split()[1:] for line in SYSLINUX_CFG.splitlines() if line.strip().startswith("APPEND"))
    assert "no_timer_check" in append and "console=ttyS0" in append
