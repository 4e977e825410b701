"""A guest's console says its kernel panicked (agents/compute/agent.py
guest_panic): what the readiness loop fails an instance on at once."""
from __future__ import annotations

import pytest

from cowfleet.agents.compute.agent import guest_panic


@pytest.mark.parametrize("console, said", [
    ("[    2.1] sysrq: Trigger a crash\r\n[    2.1] Kernel panic - not syncing: sysrq triggered crash\r\n",
     "sysrq triggered crash"),
    ("[0.03] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug\n",
     "IO-APIC + timer doesn't work!  Boot with apic=debug"),
    ("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
     "VFS: Unable to mount root fs on unknown-block(0,0)"),
    ("Kernel panic - not syncing:\n", "no reason given"),
])
def test_a_panic_at_two_boots_says_what_the_kernel_panicked_on(console, said):
    boot = "SeaBIOS\nLinux version 6.1\n" + console + "---[ end Kernel panic ]---\n"
    assert guest_panic(boot) is None            # once: the reboot may get past it
    assert guest_panic(boot + boot) == said


@pytest.mark.parametrize("console", [
    "", "SeaBIOS (version 1.16)\nBooting from Hard Disk...\n",
    "Linux version 6.1\nCOWFLEET-READY id=x\n",
    "user data says: Kernel panic is a band name\n",     # not the kernel's line
])
def test_no_panic_line_no_panic(console):
    assert guest_panic(console) is None


def test_a_long_reason_is_cut():
    assert len(guest_panic(("Kernel panic - not syncing: " + "x" * 1000 + "\n") * 2)) == 160


def test_a_panic_then_a_good_boot_is_no_failure():
    # the readiness loop looks for the readiness line first; this is the
    # console of a guest that got past one panic and booted
    assert guest_panic("Kernel panic - not syncing: fluke\nSeaBIOS\nLinux\nCOWFLEET-READY\n") is None
