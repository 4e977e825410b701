"""Does KVM really run a guest here? Decide by booting one, not by /dev/kvm.

On nested hosts /dev/kvm exists but guests stall in early boot, so the probe
boots the host's cloud kernel under ``-accel kvm`` with no root device: a
working KVM reaches the root-mount panic within seconds. Anything else means
TCG (libvirt domain type ``qemu``). The answer is cached per boot of the host.
"""
from __future__ import annotations

import glob
import logging
import os
import subprocess
import tempfile
import time

log = logging.getLogger(__name__)

PROBE_SECONDS = 20
REACHED = ("VFS: Unable to mount root", "Kernel panic", "Run /init", "Freeing unused kernel")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def probe_kvm(timeout: float = PROBE_SECONDS) -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        return False, "no kernel in /boot to probe KVM with"
    with tempfile.NamedTemporaryFile("r", suffix=".log") as out:
        cmd = ["qemu-system-x86_64", "-accel", "kvm", "-m", "128", "-nographic", "-nodefaults",
               "-no-reboot", "-serial", f"file:{out.name}", "-kernel", kernels[-1],
               "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                text = open(out.name, errors="replace").read()
                if any(mark in text for mark in REACHED):
                    return True, "a KVM guest booted its kernel"
                if proc.poll() is not None and proc.returncode != 0:
                    return False, f"qemu -accel kvm failed: {proc.stderr.read().decode()[-200:].strip()}"
                time.sleep(0.2)
            return False, f"a KVM guest did not boot in {timeout:.0f}s (nested KVM stalls)"
        finally:
            proc.kill()
            proc.wait()


def detect(cache_dir: str | None = None) -> str:
    """'kvm' or 'qemu'. COWFLEET_VIRT_TYPE overrides the probe."""
    forced = os.environ.get("COWFLEET_VIRT_TYPE")
    if forced in ("kvm", "qemu"):
        return forced
    cache = os.path.join(cache_dir or tempfile.gettempdir(), f"cowfleet-virt-type-{_boot_id()}")
    try:
        with open(cache) as fh:
            cached = fh.read().strip()
            if cached in ("kvm", "qemu"):
                return cached
    except OSError:
        pass
    ok, why = probe_kvm()
    result = "kvm" if ok else "qemu"
    log.info("hypervisor: %s (%s)", result, why)
    try:
        with open(cache, "w") as fh:
            fh.write(result)
    except OSError:
        pass
    return result
