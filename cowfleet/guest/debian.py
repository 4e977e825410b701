"""Build a minimal Debian 12 (bookworm) cloud image with cloud-init.

A real distribution image for cowfleet instances, made from Debian packages
only and laid out like the demo guest (see builder.py, whose disk writer and
initramfs it uses), so the agents treat it like any user image:

    sector 0        syslinux MBR
    partition 1     FAT16, active: syslinux, the image's own Debian cloud
                    kernel and builder.py's small initramfs (virtio modules
                    of that kernel, then switch_root to /dev/vda2)
    partition 2     ext4 root (label ``debroot``) made with ``mkfs.ext4 -d``
                    from a tree that mmdebstrap installed: systemd, udev,
                    cloud-init, systemd-networkd, openssh-server,
                    sudo, python3 (cloud-init's)

cloud-init reads cowfleet's NoCloud seed (``datasource_list: [NoCloud,
None]``), renders network-config v2 to systemd-networkd (its ``networkd``
renderer: no netplan, which Debian's own bookworm images use and which costs
9 s per first boot under TCG for ``netplan generate``), sets the
host name, creates the default user ``debian`` with the seed's keys, runs the
user data; after its final stage the unit ``cowfleet-ready.service`` prints a
``COWFLEET-READY`` line on ttyS0, which is what the compute agent waits for.

Nothing needs loop devices or mounts on the host: mmdebstrap runs in
``unshare`` mode (its chroot mounts live in a private namespace) and the disk
is written by builder.write_disk. The build downloads about 97 MB of .debs
(kept in /var/cache/cowfleet/apt-archives for the next build) and the result
is cached as /var/cache/cowfleet/debian-12-<recipe key>.raw.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cowfleet.guest import builder
from cowfleet.guest.builder import READY_MARKER, BuildError

# Bump when something the key cannot see changes the result (e.g. this
# module's post-processing).
RECIPE_VERSION = 1

SUITE = "bookworm"
VARIANT = "apt"             # Essential:yes + apt; everything else is listed below
MODE = "unshare"            # chroot mounts in a private namespace: none on the host
HOSTNAME = "debian"         # until cloud-init sets the instance's
ROOT_LABEL = "debroot"
ROOT_FREE_MIB = 512         # free space in / (the overlay has the image's size)

PACKAGES = (
    "systemd-sysv", "udev", "dbus", "kmod", "mount", "e2fsprogs", "iproute2", "procps",
    "linux-image-cloud-amd64",
    "cloud-init",           # renders network-config to systemd-networkd (part of systemd)
    "openssh-server", "sudo",
)

# Documentation and translations are not installed (about 70 MB); the
# copyright files stay.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

# Host apt settings forwarded to mmdebstrap's apt (and removed from the image
# afterwards): mirrors that serve snapshots need the first two, proxies the rest.
HOST_APT_KEYS = (
    "Acquire::Check-Valid-Until", "Acquire::Check-Date",
    "Acquire::http::Proxy", "Acquire::https::Proxy",
)

# no_timer_check as the demo guest's (builder.py says why): this kernel runs
# the same early timer check and panics the same way on a loaded TCG host
KERNEL_APPEND = "root=/dev/vda2 console=ttyS0 panic=-1 tsc=reliable no_timer_check"

CLOUD_CFG = """\
# cowfleet: instances get a NoCloud seed (iso9660, label cidata) as a second disk
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    fs_label: cidata
# /etc/hosts names the instance (sudo and friends resolve the host name)
manage_etc_hosts: true
system_info:
  network:
    renderers: [ networkd ]
# Faster first boot under TCG (each saves seconds there): C.UTF-8 needs no
# locale-gen; no RSA (6 s) and DSA host keys; no GRUB here (syslinux boots).
locale: C.UTF-8
ssh_genkeytypes: [ ed25519, ecdsa ]
grub_dpkg:
  enabled: false
"""

FSTAB = f"""\
# cowfleet Debian image: / is vda2; the FAT boot partition (vda1) is not mounted
LABEL={ROOT_LABEL}  /  ext4  defaults,errors=remount-ro  0  1
"""

READY_SCRIPT = f"""\
#!/bin/sh
# cowfleet: cloud-init's final stage has run; say so on the serial console
# (the compute agent marks the instance ready when it sees {READY_MARKER}).
iid=$(cat /run/cloud-init/.instance-id 2>/dev/null || cat /var/lib/cloud/data/instance-id 2>/dev/null)
if grep -q '"errors": \\[\\]' /run/cloud-init/result.json 2>/dev/null; then status=done; else status=error; fi
set -- $(ip -4 -br addr show scope global 2>/dev/null)
read -r up _ < /proc/uptime
echo "{READY_MARKER} instance=${{iid:-unknown}} hostname=$(hostname) address=${{3:-none}} cloud-init=$status uptime=$up" > /dev/ttyS0
"""

# The description must not contain the marker: systemd prints it on the console.
READY_UNIT = """\
[Unit]
Description=cowfleet readiness line on the serial console
After=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cowfleet-ready

[Install]
WantedBy=cloud-init.target
"""

HOSTS = f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"

# Run inside the chroot at the end: networkd is part of the initial boot
# transaction (cloud-init writes its config after the boot transaction was
# made); e2scrub_reap (LVM snapshots: none here; 23 s of the one vCPU under
# TCG) and the getty on tty1 (nobody sees the VGA console) are off; nothing host- or build-specific stays in the image (ssh host keys are
# made by cloud-init on each instance's first boot, the stock initrd is unused).
FINISH_SCRIPT = """\
chroot "$1" systemctl enable systemd-networkd.service cowfleet-ready.service
chroot "$1" systemctl disable e2scrub_reap.service getty@tty1.service
rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub
rm -f "$1"/boot/initrd.img-* "$1"/initrd.img "$1"/initrd.img.old "$1"/etc/apt/apt.conf.d/99mmdebstrap
: > "$1"/etc/resolv.conf
: > "$1"/etc/machine-id
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("COWFLEET_CACHE_DIR", "/var/cache/cowfleet"))


def overlay_files() -> dict[str, tuple[int, str]]:
    """Files added to the installed tree: path -> (mode, content)."""
    return {
        "etc/cloud/cloud.cfg.d/90_cowfleet.cfg": (0o644, CLOUD_CFG),
        "etc/fstab": (0o644, FSTAB),
        "etc/hostname": (0o644, HOSTNAME + "\n"),
        "etc/hosts": (0o644, HOSTS),
        "etc/systemd/system/cowfleet-ready.service": (0o644, READY_UNIT),
        "usr/local/sbin/cowfleet-ready": (0o755, READY_SCRIPT),
    }


def overlay_tar(files: dict[str, tuple[int, str]] | None = None) -> bytes:
    """The overlay as a tarball (root-owned, fixed modes and times; files
    only, so the tree's directories keep their own modes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, (mode, text) in sorted((files or overlay_files()).items()):
            data = text.encode()
            info = tarfile.TarInfo("./" + path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def syslinux_cfg() -> str:
    return builder.syslinux_cfg(KERNEL_APPEND)


# -- apt sources and options from the host -------------------------------------
def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            yield fields


def sources_for_suite(texts: Iterable[tuple[str, str]], suite: str = SUITE) -> str:
    """deb822 sources for ``suite`` (and its -updates, -security...) from
    apt source files given as (name, text): ``*.sources`` in deb822 form,
    ``*.list`` one entry a line. Other suites, deb-src and disabled entries
    are left out; the mirrors are the host's (none is named here)."""
    entries: list[tuple[str, list[str], str, str]] = []   # uris, suites, components, signed-by

    def keep(suites: list[str]) -> list[str]:
        return [s for s in suites if s == suite or s.startswith(suite + "-")]

    for name, text in texts:
        if name.endswith(".sources"):
            for f in _deb822_stanzas(text):
                if "deb" not in f.get("types", "").split() or f.get("enabled", "yes").lower() == "no":
                    continue
                suites = keep(f.get("suites", "").split())
                if suites and f.get("uris"):
                    entries.append((f["uris"], suites, f.get("components", "main"), f.get("signed-by", "")))
        elif name.endswith(".list"):
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if not m or not keep([m.group(3)]):
                    continue
                opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                entries.append((m.group(2), [m.group(3)], m.group(4).strip() or "main",
                                opts.get("signed-by", "")))
    out = []
    for uris, suites, components, signed_by in entries:
        stanza = f"Types: deb\nURIs: {uris}\nSuites: {' '.join(suites)}\nComponents: {components}\n"
        if signed_by:
            stanza += f"Signed-By: {signed_by}\n"
        out.append(stanza)
    return "\n".join(out)


def host_sources(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's apt sources for ``suite`` (COWFLEET_DEBIAN_SOURCES names
    a sources file to use instead)."""
    override = os.environ.get("COWFLEET_DEBIAN_SOURCES")
    if override:
        p = Path(override)
        return sources_for_suite([(p.name if p.suffix in (".sources", ".list") else p.name + ".sources",
                                   p.read_text())], suite)
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    texts = [(f.name, f.read_text()) for f in files if f.is_file() and f.suffix in (".list", ".sources")]
    found = sources_for_suite(texts, suite)
    if not found:
        raise BuildError(f"the host's apt sources have no '{suite}' entries: "
                         "set COWFLEET_DEBIAN_SOURCES to a sources file for it")
    return found


def host_apt_options(dump: str | None = None) -> list[str]:
    """mmdebstrap --aptopt values for the HOST_APT_KEYS the host's apt sets
    (from ``apt-config dump``)."""
    if dump is None:
        try:
            dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
        except OSError:
            return []
    opts = []
    for line in dump.splitlines():
        m = re.match(r'^(\S+) "(.*)";$', line.strip())
        if m and any(m.group(1).lower() == k.lower() for k in HOST_APT_KEYS):
            opts.append(f'{m.group(1)} "{m.group(2)}"')
    return opts


# -- the recipe -----------------------------------------------------------------
def mmdebstrap_command(tree: str | os.PathLike, sources: str | os.PathLike, archives: str | os.PathLike,
                       overlay: str | os.PathLike, apt_options: Iterable[str] = ()) -> list[str]:
    """The mmdebstrap invocation that installs the root tree into ``tree``:
    apt reads ``sources`` (a deb822 file), .debs are synced in from and out
    to ``archives``, ``overlay`` (a tarball) is unpacked over the result."""
    q = shlex.quote
    cmd = ["mmdebstrap", f"--mode={MODE}", f"--variant={VARIANT}", "--format=directory",
           "--include=" + ",".join(PACKAGES)]
    cmd += [f"--dpkgopt={o}" for o in DPKG_OPTIONS]
    cmd += [f"--aptopt={o}" for o in apt_options]
    cmd += [
        "--skip=essential/unlink",        # keep the essential .debs for the archive cache
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {q(str(archives))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(archives))}",
        f"--customize-hook=tar-in {q(str(overlay))} /",
        "--customize-hook=" + FINISH_SCRIPT,
        SUITE, str(tree), str(sources),
    ]
    return cmd


def recipe_key() -> str:
    """What the image depends on, hashed: packages, options, hooks, the files
    added, boot configuration and builder.py's initramfs. Not the mirror's
    package versions: remove the cached image (or pass rebuild=True) to pick
    up updates."""
    parts = [
        str(RECIPE_VERSION), str(ROOT_FREE_MIB), ROOT_LABEL,
        "\0".join(mmdebstrap_command("TREE", "SOURCES", "ARCHIVES", "OVERLAY")),
        repr(sorted(overlay_files().items())),
        syslinux_cfg(), builder.INITRAMFS_INIT, " ".join(builder.VIRTIO_MODULES),
        str(builder.BOOT_MIB),
    ]
    return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()[:12]


def image_path(cache_dir: str | os.PathLike | None = None) -> Path:
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    return d / f"debian-12-{recipe_key()}.raw"


def cached_image(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached image of the current recipe, if it was built."""
    p = image_path(cache_dir)
    return p if p.is_file() else None


def root_size_mib(used_kib: int, free_mib: int = ROOT_FREE_MIB) -> int:
    """Root file system size for a tree using ``used_kib``: 10 % and 64 MiB
    for ext4's metadata and journal, ``free_mib`` free, rounded up to 64 MiB."""
    need = used_kib * 1.1 / 1024 + 64 + free_mib
    return int(-(-need // 64) * 64)


# -- the build ------------------------------------------------------------------
def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


def _mmdebstrap(cmd: list[str], log: Path, progress) -> None:
    if not shutil.which("mmdebstrap"):
        raise BuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "INITRD": "No"})   # no stock initrd: unused
        tail: list[str] = []
        for line in proc.stderr:
            fh.write(line)
            tail = (tail + [line.rstrip()])[-15:]
            if line.startswith(("I: ", "E: ", "W: ")):
                _say(progress, "  mmdebstrap: " + line[3:].rstrip())
        if proc.wait() != 0:
            raise BuildError(f"mmdebstrap failed (log {log}):\n" + "\n".join(tail))


def _kernel(tree: Path) -> tuple[Path, Path]:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"no kernel in {tree}/boot")
    release = kernels[-1].name[len("vmlinuz-"):]
    modules = tree / "usr/lib/modules" / release
    if not modules.is_dir():
        modules = tree / "lib/modules" / release
    return kernels[-1], modules


def _du_kib(path: Path) -> int:
    out = subprocess.run(["du", "-sk", "-x", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _build(image: Path, progress) -> None:
    cache = image.parent
    archives = cache / "apt-archives"
    archives.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debian-build-", dir=cache) as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)        # apt downloads as _apt (sandboxed) into the tree
        sources = tmp / "debian.sources"
        sources.write_text(host_sources())
        overlay = tmp / "overlay.tar"
        overlay.write_bytes(overlay_tar())
        tree = tmp / "tree"
        t0 = time.monotonic()
        _say(progress, f"debian: installing {SUITE} into a tree with mmdebstrap (log {image}.log)")
        _mmdebstrap(mmdebstrap_command(tree, sources, archives, overlay, host_apt_options()),
                    Path(f"{image}.log"), progress)
        _say(progress, f"debian: tree installed ({time.monotonic() - t0:.0f}s)")
        kernel, modules = _kernel(tree)
        used = _du_kib(tree)
        root_mib = root_size_mib(used)
        t1 = time.monotonic()
        builder.write_disk(image, kernel, builder.build_initramfs(modules), syslinux_cfg(), tree,
                           root_mib, root_label=ROOT_LABEL, workdir=tmp)
        _say(progress, f"debian: disk written: {kernel.name}, root {root_mib} MiB "
                       f"({used // 1024} MiB used) ({time.monotonic() - t1:.0f}s)")


def _copy_sparse(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(tmp)], check=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def build_debian_image(out: str | os.PathLike, progress: Callable[[str], None] | None = print,
                       cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Write the Debian 12 cloud image (raw) to ``out`` and return its path.

    Built once per recipe into the cache (``image_path()``; a lock keeps
    concurrent builds apart) and copied (sparse) to ``out``; when ``out`` is
    the cached file itself nothing is copied."""
    out = Path(out)
    image = image_path(cache_dir)
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image.parent / "debian-12.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild or not image.is_file():
            t0 = time.monotonic()
            _build(image, progress)
            for old in image.parent.glob("debian-12-*.raw"):
                if old != image:
                    old.unlink(missing_ok=True)
                    Path(f"{old}.log").unlink(missing_ok=True)
            _say(progress, f"debian: built {image} in {time.monotonic() - t0:.0f}s")
        else:
            _say(progress, f"debian: cached {image}")
    if out.exists() and out.resolve() == image.resolve():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _copy_sparse(image, out)
    return out
