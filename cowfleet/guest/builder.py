"""Build the tiny demo guest image from Debian packages only.

The result is an ordinary bootable raw disk, so the rest of cowfleet treats it
like any user image (no special direct-kernel-boot path in the agents):

    sector 0        syslinux MBR
    partition 1     FAT16, active: syslinux, the Debian cloud kernel, a small
                    initramfs that loads the virtio modules and switch_roots
    partition 2     ext4 root made with ``mkfs.ext4 -d``: busybox-static and an
                    init that implements the NoCloud contract the way
                    cloud-init would (see GUEST_INIT), writes a boot record
                    to its own disk and prints a readiness line on the
                    serial console once its address is up

Nothing needs loop devices or mounts: the file systems are built as files
(mkfs.ext4 -d, mkfs.vfat + mtools) and written into the disk at their offsets.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

# The guest prints this on ttyS0 when its userland is up; agents wait for it.
READY_MARKER = "COWFLEET-READY"
# A warm-clone template prints this when it waits for its clone's seed;
# the agent saves it then (agents/compute/templates.py).
TEMPLATE_MARKER = "COWFLEET-TEMPLATE"
# The SMBIOS product name that makes the guest a template (domain.py).
TEMPLATE_PRODUCT = "cowfleet template"
# The serial of a warm spare's seed placeholder (UEVENT_HELPER, domain.py).
SEED_WAIT_SERIAL = "cowfleet-seed-wait"

# Order matters: each module depends on the ones before it (measured order;
# modules.dep of the Debian 12 cloud kernel for the last five: the seed is
# iso9660, which needs cdrom; virtio_net needs net_failover, which needs failover).
VIRTIO_MODULES = [
    "virtio_ring", "virtio", "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev", "virtio_pci", "virtio-rng", "virtio_blk",
    "cdrom", "isofs", "failover", "net_failover", "virtio_net",
]

SECTOR = 512
BOOT_START = 2048                  # 1 MiB alignment
BOOT_MIB = 24
ROOT_MIB = 24

INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in {modules}; do /bin/busybox insmod /lib/modules/$m.ko; done
root=/dev/vda2
for arg in $(/bin/busybox cat /proc/cmdline); do
  case $arg in root=*) root=${{arg#root=}};; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 200 ]; do /bin/busybox usleep 50000; i=$((i+1)); done
/bin/busybox mount -t ext4 "$root" /newroot || {{ echo "cowfleet-initramfs: cannot mount $root"; exec /bin/busybox sh; }}
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
"""

GUEST_INIT = r"""#!/bin/busybox sh
# cowfleet demo guest: the NoCloud contract in busybox, as cloud-init would
# do it -- read the seed (label cidata), take the host name from meta-data,
# configure the NIC whose MAC network-config names, run user-data when it is
# a #! script -- then serve a page on TCP 80 and say it is ready.
# Shell builtins (read, case, ${...}) wherever a fork would do: under TCG a
# fork+exec of busybox costs tens of ms, several times that with ten guests on
# two cores, and the seed's handling cost 20 of them (bench/instance_network.py).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
[ -e /dev/ttyS0 ] || mount -t devtmpfs dev /dev
mkdir -p /run /tmp /www /var/lib/cowfleet
# every line the guest prints carries its uptime: where its boot time goes
say() { read up _ < /proc/uptime; echo "cowfleet-guest: [$up] $*" > /dev/ttyS0; }
say "userland"
# the kernel's entropy source (domain.py gives every guest a virtio-rng):
# without one, the first read of /dev/urandom waited ~1 s of jitter
# entropy for the CRNG under TCG -- in every cold boot and every clone
read rng 2>/dev/null < /sys/class/misc/hw_random/rng_current
say "rng: ${rng:-none}"
hn=cowfleet-guest
echo $hn > /proc/sys/kernel/hostname
read id 2>/dev/null < /sys/class/dmi/id/product_serial
read n 2>/dev/null < /var/lib/cowfleet/boots
n=$((n+1))
echo $n > /var/lib/cowfleet/boots
read up _ < /proc/uptime
echo "boot $n instance=$id uptime=$up" >> /var/lib/cowfleet/boot.log
# a warm-clone template (issue 13; the agent says so in the SMBIOS product
# name): it boots with no seed and no NIC, says so and waits -- blocked on a
# FIFO, no CPU spent -- for the block device its clone's seed arrives on
# (hot-plugged after the restore, with the clone's NIC); the clone then runs
# the first-boot path below as a cold boot does, with its own identity.
# busybox's uevent reads the kernel's uevents from netlink (the Debian cloud
# kernel has no CONFIG_UEVENT_HELPER, so no /proc/sys/kernel/hotplug).
clone=""
read product 2>/dev/null < /sys/class/dmi/id/product_name
if [ "$product" = "cowfleet template" ]; then
  mkfifo /run/wake
  uevent /sbin/cowfleet-uevent &
  waker=$!
  # zero the free memory before the save: a freed page keeps its old bytes
  # (the unpacked initramfs, the boot's buffers) and qemu's stream leaves
  # out only pages of zeros, so every clone's restore reads less: a tmpfs
  # file of zeros fills what is free but a margin, and goes again.
  # Measured (small, 128 MiB): the save image 95.4 -> 71.3 MB. Dropping the
  # page cache first gained 1 MB more (70.2): not done, a clone would read
  # it again.
  free=0
  while read -r k v _; do [ "$k" = MemFree: ] && free=$v; done < /proc/meminfo
  mib=$(( (free - 16384) / 1024 ))
  if [ $mib -gt 0 ] && mkdir -p /run/zero && mount -t tmpfs -o size=${mib}m tmpfs /run/zero; then
    dd if=/dev/zero of=/run/zero/fill bs=1M count=$mib 2>/dev/null
    umount /run/zero
  else
    mib=0
  fi
  say "template: $mib MiB of free memory zeroed; waiting for a seed"
  echo "{template}" > /dev/ttyS0
  read -r disk < /run/wake
  kill $waker
  clone=1
  # the clock stood still in the save: the RTC is the host's again
  hwclock -s -u 2>/dev/null
  say "clone: seed on /dev/$disk"
  # a placeholder read as zeros when it was plugged: what the kernel keeps
  # of it is stale now that the seed is written in it
  blockdev --flushbufs /dev/$disk 2>/dev/null
fi
# scratch data so every instance really writes to its overlay
dd if=/dev/urandom of=/var/lib/cowfleet/scratch bs=64k count=16 2>/dev/null
sync
# the seed: the agent writes every value as key: "value", one a line
unq() { v=${1#*: }; v=${v#- }; v=${v#\"}; v=${v%\"}; }
seed=/run/seed
mkdir -p $seed
dev=$(findfs LABEL=cidata 2>/dev/null)
[ -n "$dev" ] || dev=/dev/vdb
iid=""; addr=""; mac=""; gw=""
if [ -b "$dev" ] && mount -t iso9660 -o ro "$dev" $seed 2>/dev/null; then
  files=""; for f in $seed/*; do files="$files ${f##*/}"; done
  say "seed on $dev:$files"
  while read -r line; do
    case $line in
      instance-id:*) unq "$line"; iid=$v;;
      local-hostname:*) unq "$line"; [ -n "$v" ] && hn=$v && echo "$hn" > /proc/sys/kernel/hostname;;
      random_seed:*) unq "$line"; echo "$v" > /dev/urandom;;
    esac
  done < $seed/meta-data
  next=""
  while read -r line; do
    case $line in
      macaddress:*) unq "$line"; mac=$v;;
      addresses:*) next=address;;
      "- "*) [ "$next" = address ] && unq "$line" && addr=$v; next="";;
      via:*) unq "$line"; gw=$v;;
    esac
  done < $seed/network-config
  nic=""; i=0
  while :; do
    for d in /sys/class/net/*; do
      read a 2>/dev/null < $d/address && [ "$a" = "$mac" ] && nic=${d##*/}
    done
    # a clone's NIC is hot-plugged with its seed: give its driver 10 s
    [ -n "$nic" ] || [ -z "$clone" ] || [ $i -ge 100 ] && break
    usleep 100000; i=$((i+1))
  done
  if [ -n "$nic" ] && [ -n "$addr" ]; then
    ip addr add "$addr" dev "$nic"
    ip link set "$nic" up
    [ -n "$gw" ] && ip route add default via "$gw"
    say "network $nic mac=$mac address=$addr gateway=$gw"
  else
    say "network: no NIC with mac=$mac or no address in network-config"
  fi
  first=""; read -r first < $seed/user-data
  case $first in
    "#!"*)
      cp $seed/user-data /run/user-data
      chmod 755 /run/user-data
      /run/user-data > /run/user-data.out 2>&1
      say "user-data exited $?";;
  esac
else
  say "no NoCloud seed (label cidata)"
fi
{
  echo "instance-id: $iid"
  echo "hostname: $hn"
  echo "address: $addr"
  echo "serial: $id"
  echo "clone: ${clone:-0}"
  echo "user-data-output:"
  [ -f /run/user-data.out ] && cat /run/user-data.out
} > /www/index.html
httpd -p 80 -h /www
read up _ < /proc/uptime
echo "{marker} instance=${iid:-$id} boots=$n address=$addr uptime=$up" > /dev/ttyS0
while :; do sleep 3600; done
"""

# Run by busybox's uevent for each kernel uevent while a template waits:
# the first whole block device added wakes the guest's init -- or, for a
# disk whose serial is SEED_WAIT_SERIAL (a warm spare's seed placeholder,
# plugged before any instance claims it), its resize: the host writes the
# instance's seed into it and grows it, and the kernel says so with a
# change uevent (RESIZE=1), no PCI hot-plug at the claim.
UEVENT_HELPER = r"""#!/bin/busybox sh
[ "$SUBSYSTEM" = block ] && [ "$DEVTYPE" = disk ] || exit 0
read serial 2>/dev/null < /sys/block/$DEVNAME/serial
case "$ACTION:$serial:$RESIZE" in
  add:{wait_serial}:*) ;;
  add:*|change:{wait_serial}:1) echo "$DEVNAME" > /run/wake;;
esac
""".replace("{wait_serial}", SEED_WAIT_SERIAL)


def syslinux_cfg(append: str) -> str:
    """syslinux.cfg booting ``vmlinuz`` with ``initrd.img`` from the boot
    partition at once (no prompt), with ``append`` after the initrd."""
    return ("DEFAULT cowfleet\nPROMPT 0\nTIMEOUT 0\nLABEL cowfleet\n  KERNEL vmlinuz\n"
            f"  APPEND initrd=initrd.img {append}\n")


# no_timer_check: the kernel's early check that the timer interrupt reaches
# the IO-APIC counts jiffies over a short busy-wait; a TCG vCPU starved by a
# loaded host misses it and the guest panics ("IO-APIC + timer doesn't
# work!") at 0.03 s, every boot: both guests of the racks VM lab did so at a
# load average of ~80 on 2 cores and never became ready. The timer works; the
# check is what a VM does without (as cloud images' kernel lines do).
SYSLINUX_CFG = syslinux_cfg("root=/dev/vda2 console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check")


class BuildError(RuntimeError):
    pass


def recipe_key() -> str:
    """What a built image depends on (scripts, modules, kernel): caches of
    the demo image are named by it, so a changed recipe is built anew."""
    try:
        kernel = find_kernel()[0].name
    except BuildError:
        kernel = "none"
    text = "\0".join([INITRAMFS_INIT, GUEST_INIT, UEVENT_HELPER, SYSLINUX_CFG, " ".join(VIRTIO_MODULES), kernel])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _recipe_file(image: Path) -> Path:
    return image.with_name(image.name + ".recipe")


def is_current(image: str | os.PathLike) -> bool:
    """Whether a cached image was built by this recipe (its sidecar says)."""
    image = Path(image)
    try:
        return image.exists() and _recipe_file(image).read_text().strip() == recipe_key()
    except OSError:
        return False


def find_kernel() -> tuple[Path, Path]:
    """The newest Debian cloud kernel installed here and its module tree."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not kernels:
        raise BuildError("no Debian cloud kernel in /boot: apt-get install linux-image-cloud-amd64")
    kernel = Path(kernels[-1])
    release = kernel.name[len("vmlinuz-"):]
    modules = Path("/lib/modules") / release
    if not modules.is_dir():
        raise BuildError(f"kernel modules for {release} missing under /lib/modules")
    return kernel, modules


def _busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.exists():
            out = subprocess.run(["file", "-L", str(p)], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically linked"
            if "dynamically" not in out:
                return p
    raise BuildError("busybox-static is not installed: apt-get install busybox-static")


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{cmd[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _cpio_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """Write a newc cpio archive (the initramfs format).

    Hand-written because it is 20 lines and no maintained PyPI package writes
    newc; shelling out to cpio would need a staged directory tree anyway.
    """
    out = io.BytesIO()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0))
        out.write(hdr.encode() + nm)
        out.write(b"\0" * ((4 - (110 + len(nm)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    for ino, (name, (mode, data)) in enumerate(sorted(files.items()), start=1):
        entry(name, mode, data, ino)
    entry("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def build_initramfs(modules_dir: Path) -> bytes:
    busybox = _busybox().read_bytes()
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    files: dict[str, tuple[int, bytes]] = {
        n: (d, b"") for n in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")}
    files["bin/busybox"] = (x, busybox)
    files["init"] = (x, INITRAMFS_INIT.format(modules=" ".join(VIRTIO_MODULES)).encode())
    for mod in VIRTIO_MODULES:
        found = list(modules_dir.rglob(f"{mod}.ko*"))
        if not found:
            raise BuildError(f"kernel module {mod} not found under {modules_dir}")
        data = found[0].read_bytes()
        if found[0].suffix == ".xz" or found[0].name.endswith(".ko.xz"):
            data = lzma.decompress(data)
        files[f"lib/modules/{mod}.ko"] = (f, data)
    return gzip.compress(_cpio_newc(files), compresslevel=6)


def _root_tree(root: Path) -> None:
    for sub in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "var/lib/cowfleet", "root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(_busybox(), root / "bin" / "busybox")
    init = root / "sbin" / "init"
    init.write_text(GUEST_INIT.replace("{marker}", READY_MARKER).replace("{template}", TEMPLATE_MARKER))
    init.chmod(0o755)
    helper = root / "sbin" / "cowfleet-uevent"
    helper.write_text(UEVENT_HELPER)
    helper.chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "hostname").write_text("cowfleet-guest\n")
    (root / "etc" / "cowfleet-release").write_text("cowfleet demo guest 1\n")


def _copy_into(fh, src: Path, offset: int, chunk: int = 1 << 20) -> None:
    """Copy ``src`` into ``fh`` at ``offset``, leaving all-zero chunks as
    holes (``fh`` was truncated to size: they read as zeros), so the disk
    stays as sparse as its file systems."""
    zero = bytes(chunk)
    with open(src, "rb") as s:
        pos = offset
        while data := s.read(chunk):
            if data != zero[:len(data)]:
                fh.seek(pos)
                fh.write(data)
            pos += len(data)


def write_disk(out: str | os.PathLike, kernel: Path, initrd: bytes, cfg: str, root_tree: Path,
               root_mib: int, root_label: str = "cowroot", boot_mib: int = BOOT_MIB,
               workdir: str | os.PathLike | None = None) -> Path:
    """Write a bootable raw disk to ``out`` (a temporary file renamed):
    syslinux MBR, FAT16 boot partition (``kernel`` as vmlinuz, ``initrd``
    as initrd.img, ``cfg`` as syslinux.cfg) and an ext4 root partition of
    ``root_mib`` MiB made from ``root_tree`` -- no loop devices, no mounts."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cowfleet-disk-", dir=workdir) as tmp:
        tmp = Path(tmp)
        # root file system
        root_img = tmp / "root.ext4"
        _run("mkfs.ext4", "-q", "-F", "-L", root_label, "-d", str(root_tree), str(root_img), f"{root_mib}M")
        # boot file system
        (tmp / "initrd.img").write_bytes(initrd)
        (tmp / "syslinux.cfg").write_text(cfg)
        boot_img = tmp / "boot.fat"
        _run("mkfs.vfat", "-n", "COWBOOT", "-h", str(BOOT_START), "-C", str(boot_img), str(boot_mib * 1024))
        for name, src in (("vmlinuz", kernel), ("initrd.img", tmp / "initrd.img"),
                          ("syslinux.cfg", tmp / "syslinux.cfg")):
            _run("mcopy", "-i", str(boot_img), str(src), f"::{name}")
        # whole disk: MBR + partition table + the two file systems
        boot_sectors = boot_mib * 1024 * 1024 // SECTOR
        root_start = BOOT_START + boot_sectors
        root_sectors = root_mib * 1024 * 1024 // SECTOR
        disk = tmp / "disk.raw"
        with open(disk, "wb") as fh:
            fh.truncate((root_start + root_sectors) * SECTOR)
        layout = (f"label: dos\nstart={BOOT_START}, size={boot_sectors}, type=6, bootable\n"
                  f"start={root_start}, size={root_sectors}, type=83\n")
        proc = subprocess.run(["sfdisk", "-q", str(disk)], input=layout, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"sfdisk failed: {proc.stderr.strip()}")
        with open(disk, "r+b") as fh:
            for img, start in ((boot_img, BOOT_START), (root_img, root_start)):
                _copy_into(fh, img, start * SECTOR)
            mbr = Path("/usr/lib/syslinux/mbr/mbr.bin")
            if not mbr.exists():
                raise BuildError("syslinux MBR missing: apt-get install syslinux-common")
            fh.seek(0)
            fh.write(mbr.read_bytes()[:440])
        _run("syslinux", "--offset", str(BOOT_START * SECTOR), "--install", str(disk))
        tmp_out = out.with_name(out.name + ".partial")
        shutil.move(str(disk), tmp_out)
        os.chmod(tmp_out, 0o644)
        os.replace(tmp_out, out)
    return out


def build_demo_image(out: str | os.PathLike) -> Path:
    """Write a bootable raw disk image to ``out`` and return its path."""
    out = Path(out)
    kernel, modules = find_kernel()
    with tempfile.TemporaryDirectory(prefix="cowfleet-build-") as tmp:
        tree = Path(tmp) / "root"
        _root_tree(tree)
        write_disk(out, kernel, build_initramfs(modules), SYSLINUX_CFG, tree, ROOT_MIB)
    _recipe_file(out).write_text(recipe_key() + "\n")
    return out
