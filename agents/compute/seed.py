"""Per-instance NoCloud seeds: identity and configuration the cloud-init way.

A seed is a small iso9660 volume labelled ``cidata`` holding ``meta-data``,
``network-config`` (v2) and ``user-data`` -- what cloud-init's NoCloud data
source reads, so standard cloud images work unmodified. It is built in
process with pycdlib (no mounts, no loop devices, no genisoimage), attached
read-only as a second virtio disk, and removed with its instance.

How the group's fields reach the guest (the documented rule):
- ``user_data`` goes into ``user-data`` verbatim, whatever it is (a
  ``#cloud-config`` document, a ``#!`` script, a MIME multipart);
- ``ssh_authorized_keys`` go into ``meta-data`` as ``public-keys``, which
  cloud-init installs for the image's default user whatever the user data
  says; when the group has no ``user_data``, ``user-data`` is a
  ``#cloud-config`` document with the same keys under ``ssh_authorized_keys``.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pycdlib

from cowfleet.agents.compute.files import InstanceFileStore
from cowfleet.faults import fault_point

LABEL = "cidata"


def _q(value: str) -> str:
    """A YAML scalar: a JSON string is a valid YAML double-quoted scalar."""
    return json.dumps(value)


@dataclass(frozen=True)
class SeedData:
    instance_id: str
    hostname: str
    mac: str
    address: str | None      # ADDR/PREFIX; None: DHCP (a node without the routed network)
    gateway: str | None
    user_data: str | None = None
    ssh_authorized_keys: tuple[str, ...] = field(default_factory=tuple)
    # host random bytes (base64) for the guest's RNG: cloud-init's seed_random
    # module reads meta-data's random_seed; the demo guest writes it to
    # /dev/urandom. What makes a warm clone's RNG its own (issue 13): it
    # wakes with its template's pool, and the Debian 12 kernel has no vmgenid
    # driver to reseed it on a new generation ID.
    random_seed: str | None = None

    def meta_data(self) -> str:
        lines = [f"instance-id: {_q(self.instance_id)}", f"local-hostname: {_q(self.hostname)}"]
        if self.random_seed:
            lines.append(f"random_seed: {_q(self.random_seed)}")
        if self.ssh_authorized_keys:
            lines.append("public-keys:")
            lines += [f"  - {_q(k)}" for k in self.ssh_authorized_keys]
        return "\n".join(lines) + "\n"

    def network_config(self) -> str:
        # matched on the MAC, so the NIC's name in the guest does not matter
        head = ("version: 2\n"
                "ethernets:\n"
                "  eth0:\n"
                "    match:\n"
                f"      macaddress: {_q(self.mac)}\n"
                "    set-name: eth0\n")
        if not self.address:
            return head + "    dhcp4: true\n"
        return (
            head +
            "    addresses:\n"
            f"      - {_q(self.address)}\n"
            "    routes:\n"
            f"      - to: {_q('0.0.0.0/0')}\n"
            f"        via: {_q(self.gateway)}\n")

    def user_data_text(self) -> str:
        if self.user_data is not None:
            return self.user_data
        if self.ssh_authorized_keys:
            return "#cloud-config\nssh_authorized_keys:\n" + "".join(
                f"  - {_q(k)}\n" for k in self.ssh_authorized_keys)
        return ""

    def files(self) -> dict[str, bytes]:
        return {"meta-data": self.meta_data().encode(),
                "network-config": self.network_config().encode(),
                "user-data": self.user_data_text().encode()}


# ISO 9660 level-3 names for the Rock Ridge / Joliet names cloud-init reads
_ISO_NAMES = {"meta-data": "/METADATA.;1", "network-config": "/NETWORKC.;1", "user-data": "/USERDATA.;1"}


def build_seed(data: SeedData, out: str | os.PathLike, who: str = "") -> Path:
    """Write the seed volume to ``out`` whole (a temporary file renamed);
    ``who`` names the process at the fault point between the two."""
    out = Path(out)
    tmp = out.with_suffix(".partial")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, content in data.files().items():
            iso.add_fp(io.BytesIO(content), len(content), _ISO_NAMES[name], rr_name=name,
                       joliet_path=f"/{name}")
        iso.write(str(tmp))
    finally:
        iso.close()
    os.chmod(tmp, 0o644)        # qemu runs unprivileged
    fault_point("start.seed-partial", who)
    os.replace(tmp, out)
    return out


def read_seed(path: str | os.PathLike) -> dict[str, bytes]:
    """The files of a seed volume by name (tests and diagnostics)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for name in _ISO_NAMES:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
        out["label"] = iso.pvd.volume_identifier.decode().strip().encode()
        return out
    finally:
        iso.close()


class SeedStore(InstanceFileStore):
    """Seeds on the compute node's disk, beside the overlays: one per instance."""
    suffix = ".iso"

    def create(self, group: str, instance_id: str, data: SeedData, who: str = "") -> Path:
        self._folder(group)
        return build_seed(data, self.path(group, instance_id), who)
