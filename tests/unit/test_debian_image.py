"""The Debian 12 cloud image recipe (cowfleet/guest/debian.py): its pure parts
only -- no network, no mmdebstrap, no building."""
from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile

import pytest
import yaml

from cowfleet.guest import builder, debian
from cowfleet.guest.builder import READY_MARKER, BuildError


# -- recipe key -------------------------------------------------------------------
def test_recipe_key_is_stable():
    k = debian.recipe_key()
    assert re.fullmatch(r"[0-9a-f]{12}", k)
    assert debian.recipe_key() == k


@pytest.mark.parametrize("name, value", [
    ("PACKAGES", debian.PACKAGES + ("curl",)),
    ("CLOUD_CFG", debian.CLOUD_CFG + "ssh_pwauth: true\n"),
    ("READY_SCRIPT", debian.READY_SCRIPT + "true\n"),
    ("FSTAB", debian.FSTAB + "# x\n"),
    ("KERNEL_APPEND", debian.KERNEL_APPEND + " quiet"),
    ("FINISH_SCRIPT", debian.FINISH_SCRIPT + "true\n"),
    ("DPKG_OPTIONS", debian.DPKG_OPTIONS[:-1]),
    ("SUITE", "trixie"),
    ("ROOT_FREE_MIB", 1024),
    ("RECIPE_VERSION", debian.RECIPE_VERSION + 1),
])
def test_recipe_key_changes_with_the_recipe(monkeypatch, name, value):
    before = debian.recipe_key()
    monkeypatch.setattr(debian, name, value)
    assert debian.recipe_key() != before


def test_recipe_key_follows_the_shared_initramfs(monkeypatch):
    before = debian.recipe_key()
    monkeypatch.setattr(builder, "VIRTIO_MODULES", builder.VIRTIO_MODULES + ["virtio_rng"])
    assert debian.recipe_key() != before


def test_recipe_key_ignores_the_hosts_apt_settings(monkeypatch):
    before = debian.recipe_key()
    monkeypatch.setattr(debian, "host_apt_options", lambda *a: ['Acquire::http::Proxy "http://p:1"'])
    monkeypatch.setenv("COWFLEET_DEBIAN_SOURCES", "/nonexistent")
    assert debian.recipe_key() == before


def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("COWFLEET_CACHE_DIR", str(tmp_path))
    p = debian.image_path()
    assert p == tmp_path / f"debian-12-{debian.recipe_key()}.raw"
    assert debian.cached_image() is None
    p.write_bytes(b"x")
    assert debian.cached_image() == p
    assert debian.cached_image(tmp_path / "other") is None


def test_a_cached_image_is_not_built_again(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "_build", lambda *a: pytest.fail("built although cached"))
    cached = debian.image_path(tmp_path)
    with open(cached, "wb") as fh:
        fh.write(b"MBR")
        fh.truncate(8 << 20)
    said = []
    out = debian.build_debian_image(tmp_path / "out" / "img.raw", progress=said.append, cache_dir=tmp_path)
    assert out.read_bytes() == cached.read_bytes()
    assert out.stat().st_blocks * 512 < (1 << 20), "the copy stays sparse"
    assert any("cached" in s for s in said)
    assert debian.build_debian_image(cached, progress=None, cache_dir=tmp_path) == cached


def test_a_stale_image_is_replaced_when_built(tmp_path, monkeypatch):
    stale = tmp_path / "debian-12-000000000000.raw"
    stale.write_bytes(b"old")

    def fake_build(image, progress):
        image.write_bytes(b"new")
    monkeypatch.setattr(debian, "_build", fake_build)
    out = debian.build_debian_image(debian.image_path(tmp_path), progress=None, cache_dir=tmp_path)
    assert out.read_bytes() == b"new" and not stale.exists()


def test_root_size():
    for used_kib in (0, 1, 400 * 1024, 401 * 1024 + 7):
        mib = debian.root_size_mib(used_kib)
        assert mib % 64 == 0
        assert mib >= used_kib * 1.1 / 1024 + 64 + debian.ROOT_FREE_MIB
        assert mib < used_kib * 1.1 / 1024 + 64 + debian.ROOT_FREE_MIB + 64
    assert debian.root_size_mib(400 * 1024, free_mib=0) < debian.root_size_mib(400 * 1024)


# -- files in the image ------------------------------------------------------------
def test_cloud_cfg():
    cfg = yaml.safe_load(debian.CLOUD_CFG)
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["datasource"]["NoCloud"]["fs_label"] == "cidata"
    assert cfg["system_info"]["network"]["renderers"] == ["networkd"]
    assert cfg["locale"] == "C.UTF-8"
    assert cfg["manage_etc_hosts"] is True
    assert "rsa" not in cfg["ssh_genkeytypes"] and "ed25519" in cfg["ssh_genkeytypes"]
    # ds-identify reads datasource_list only when it is on one line
    assert re.search(r"^datasource_list: \[.*\]$", debian.CLOUD_CFG, re.MULTILINE)


def test_cloud_cfg_agrees_with_the_seed():
    from agents.compute.seed import LABEL
    assert yaml.safe_load(debian.CLOUD_CFG)["datasource"]["NoCloud"]["fs_label"] == LABEL


def test_fstab():
    rows = [line.split() for line in debian.FSTAB.splitlines() if line and not line.startswith("#")]
    assert rows == [[f"LABEL={debian.ROOT_LABEL}", "/", "ext4", "defaults,errors=remount-ro", "0", "1"]]


def test_syslinux_cfg():
    cfg = debian.syslinux_cfg()
    lines = [line.strip() for line in cfg.splitlines()]
    assert "KERNEL vmlinuz" in lines and "TIMEOUT 0" in lines and "PROMPT 0" in lines
    append = next(line for line in lines if line.startswith("APPEND "))
    args = append.split()[1:]
    assert args[0] == "initrd=initrd.img"
    assert "root=/dev/vda2" in args       # what builder.py's initramfs mounts
    assert "console=ttyS0" in args        # the console the agent reads
    assert "quiet" not in args


def test_builder_syslinux_cfg_unchanged():
    assert builder.SYSLINUX_CFG == (
        "DEFAULT cowfleet\nPROMPT 0\nTIMEOUT 0\nLABEL cowfleet\n  KERNEL vmlinuz\n"
        "  APPEND initrd=initrd.img root=/dev/vda2 console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check\n")


def _unit(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
        elif "=" in line:
            k, v = line.split("=", 1)
            section[k] = v
    return out


def test_ready_unit():
    unit = _unit(debian.READY_UNIT)
    assert unit["Unit"]["After"] == "cloud-final.service"
    assert unit["Install"]["WantedBy"] == "cloud-init.target"   # not multi-user: cloud-final is after it
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["ExecStart"].lstrip("/") in debian.overlay_files()
    # systemd prints the description on the console: it must not look ready
    assert READY_MARKER not in debian.READY_UNIT


def test_ready_script(tmp_path):
    script = debian.READY_SCRIPT
    assert script.startswith("#!/bin/sh\n")
    line = next(x for x in script.splitlines() if x.startswith("echo "))
    assert line.startswith(f'echo "{READY_MARKER} ') and line.endswith("> /dev/ttyS0")
    path = tmp_path / "ready"
    path.write_text(script)
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0


def test_finish_script_is_sh(tmp_path):
    path = tmp_path / "finish"
    path.write_text(debian.FINISH_SCRIPT)
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0
    assert "systemctl enable systemd-networkd.service cowfleet-ready.service" in debian.FINISH_SCRIPT
    assert '"$1"/etc/ssh/ssh_host_*_key' in debian.FINISH_SCRIPT      # made per instance by cloud-init
    assert ': > "$1"/etc/machine-id' in debian.FINISH_SCRIPT


def test_overlay_tar():
    files = debian.overlay_files()
    with tarfile.open(fileobj=io.BytesIO(debian.overlay_tar()), mode="r") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted("./" + p for p in files)
        for m in members:
            mode, text = files[m.name[2:]]
            assert m.isfile() and m.uid == 0 and m.gid == 0 and m.mode == mode
            assert tar.extractfile(m).read().decode() == text
    assert files["usr/local/sbin/cowfleet-ready"][0] == 0o755
    assert files["etc/hostname"][1] == debian.HOSTNAME + "\n"


# -- mmdebstrap and apt -------------------------------------------------------------
def test_mmdebstrap_command():
    cmd = debian.mmdebstrap_command("/t/tree", "/t/debian.sources", "/c/apt-archives", "/t/overlay.tar",
                                    ['Acquire::Check-Valid-Until "false"'])
    assert cmd[0] == "mmdebstrap"
    assert cmd[-3:] == ["bookworm", "/t/tree", "/t/debian.sources"]
    assert "--mode=unshare" in cmd and "--format=directory" in cmd and "--variant=apt" in cmd
    include = [c for c in cmd if c.startswith("--include=")]
    assert len(include) == 1
    pkgs = include[0].split("=", 1)[1].split(",")
    for p in ("systemd-sysv", "cloud-init", "linux-image-cloud-amd64", "openssh-server", "udev", "mount"):
        assert p in pkgs
    assert "--aptopt=Acquire::Check-Valid-Until \"false\"" in cmd
    assert "--setup-hook=sync-in /c/apt-archives /var/cache/apt/archives/" in cmd
    assert "--customize-hook=sync-out /var/cache/apt/archives /c/apt-archives" in cmd
    assert "--customize-hook=tar-in /t/overlay.tar /" in cmd
    assert "--customize-hook=" + debian.FINISH_SCRIPT in cmd
    assert "--skip=essential/unlink" in cmd
    # the overlay goes in before the finishing script enables its unit
    assert cmd.index("--customize-hook=tar-in /t/overlay.tar /") < cmd.index("--customize-hook=" + debian.FINISH_SCRIPT)
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd


def test_mmdebstrap_command_quotes_paths():
    cmd = debian.mmdebstrap_command("/t/tree", "/t/s", "/c/a b", "/t/o")
    assert "--setup-hook=sync-in '/c/a b' /var/cache/apt/archives/" in cmd


def test_no_mirror_is_named_in_the_recipe():
    text = " ".join(debian.mmdebstrap_command("T", "S", "A", "O")) + repr(debian.overlay_files())
    assert "http" not in text and ".org" not in text


SOURCES = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://other.example/node
Suites: nodistro
Components: main

Types: deb
URIs: http://mirror.example/debian
Suites: trixie bookworm-backports
Components: main contrib
Enabled: no
"""


def test_sources_for_suite_deb822():
    out = debian.sources_for_suite([("debian.sources", SOURCES)])
    stanzas = [dict(line.split(": ", 1) for line in block.splitlines()) for block in out.strip().split("\n\n")]
    assert stanzas == [
        {"Types": "deb", "URIs": "http://mirror.example/debian", "Suites": "bookworm bookworm-updates",
         "Components": "main", "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg"},
        {"Types": "deb", "URIs": "http://mirror.example/debian-security", "Suites": "bookworm-security",
         "Components": "main"},
    ]


def test_sources_for_suite_one_line():
    text = ("# deb http://x.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://x.example/debian bookworm main contrib\n"
            "deb-src http://x.example/debian bookworm main\n"
            "deb http://x.example/debian sid main\n"
            "deb http://y.example/debian-security bookworm-security main\n")
    out = debian.sources_for_suite([("sources.list", text), ("ignored.txt", text)])
    assert out == ("Types: deb\nURIs: http://x.example/debian\nSuites: bookworm\nComponents: main contrib\n"
                   "Signed-By: /k.gpg\n\n"
                   "Types: deb\nURIs: http://y.example/debian-security\nSuites: bookworm-security\n"
                   "Components: main\n")


def test_host_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("COWFLEET_DEBIAN_SOURCES", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(BuildError, match="COWFLEET_DEBIAN_SOURCES"):
        debian.host_sources(apt_dir=tmp_path)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(SOURCES)
    (tmp_path / "sources.list.d" / "x.sources.disabled").write_text(SOURCES.replace("bookworm", "bookworm-x"))
    assert "bookworm-security" in debian.host_sources(apt_dir=tmp_path)
    assert "bookworm-x" not in debian.host_sources(apt_dir=tmp_path)
    own = tmp_path / "mine"
    own.write_text("Types: deb\nURIs: http://z.example/debian\nSuites: bookworm\nComponents: main\n")
    monkeypatch.setenv("COWFLEET_DEBIAN_SOURCES", str(own))
    assert "http://z.example/debian" in debian.host_sources(apt_dir=tmp_path)


def test_host_apt_options():
    dump = ('APT "";\nAPT::Architecture "amd64";\nAcquire::Check-Valid-Until "false";\n'
            'Acquire::http::Proxy "http://proxy.example:3128";\nAcquire::Languages "none";\n'
            'acquire::check-date "false";\n')
    assert debian.host_apt_options(dump) == [
        'Acquire::Check-Valid-Until "false"', 'Acquire::http::Proxy "http://proxy.example:3128"',
        'acquire::check-date "false"']
    assert debian.host_apt_options("") == []


def test_kernel_in_tree(tmp_path):
    with pytest.raises(BuildError):
        debian._kernel(tmp_path)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-6.1.0-1-cloud-amd64").write_bytes(b"k")
    (tmp_path / "usr/lib/modules/6.1.0-1-cloud-amd64").mkdir(parents=True)
    kernel, modules = debian._kernel(tmp_path)
    assert kernel.name == "vmlinuz-6.1.0-1-cloud-amd64"
    assert modules == tmp_path / "usr/lib/modules/6.1.0-1-cloud-amd64"
    assert os.path.isdir(modules)
