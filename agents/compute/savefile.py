"""libvirt's qemu save image: read it, check it is one this libvirt wrote
of one of our domains, and restream it under another domain's identity.

Why by hand: restoring a saved domain under another name or UUID is what
a warm clone is, and libvirt refuses it through every API it has (measured
on libvirt 9.0: ``virDomainRestoreFlags`` and ``virDomainRestoreParams``
with a DXML of another UUID answer "Target domain uuid ... does not match
source", another name "Target domain name ... does not match source"), and
two domains cannot share a UUID. No library reads this format: it is
libvirt's private one (src/qemu/qemu_saveimage.[ch]), so it is pinned here
to what the installed libvirt writes, checked field by field, and anything
else is refused with :class:`SaveImageError` -- the caller then boots cold.

The layout (libvirt 9.0, measured on a saved demo guest):

    0    magic    16 bytes  "LibvirtQemudSave" ("LibvirtQemudPart" while
                            libvirt is still writing it)
    16   19 x little-endian uint32: version (2), data_len, was_running,
                            compressed (0: raw), cookieOffset, 14 unused (0)
    92   the domain XML, NUL-terminated (cookieOffset bytes with its NUL)
         the save cookie (XML, NUL-terminated), zero padding up to data_len
    92 + data_len           qemu's migration stream ("QEVM", version 3)

libvirt reads the header from the file it is given and hands qemu the file
descriptor positioned at the stream; qemu reads it in order, never seeking.
So a clone needs no copy of the ~94 MB stream: :meth:`SaveImage.feed`
writes a new header and XML into a pipe (a FIFO libvirt opens as the save
file) and splices the template's stream after it (os.splice: page-cache
pages moved into the pipe, not copied through this process).
"""
from __future__ import annotations

import fcntl
import os
import stat
import struct
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from cowfleet.agents.compute.domain import METADATA_KEY, METADATA_NS, DomainSpec

MAGIC = b"LibvirtQemudSave"
MAGIC_PARTIAL = b"LibvirtQemudPart"
# the version libvirt 9.0 writes (QEMU_SAVE_VERSION); any other is refused
VERSION = 2
_FIELDS = struct.Struct("<19I")
HEADER_LEN = len(MAGIC) + _FIELDS.size          # 92
# libvirt pads the XML and cookie with 64 KiB of zeros when it saves
PADDING = 64 * 1024
# the longest XML+cookie we accept: a domain of ours is ~2 KB
MAX_DATA_LEN = 1 << 20
# qemu's migration stream: QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION
STREAM_MAGIC = b"QEVM\x00\x00\x00\x03"
PIPE_SIZE = 1 << 20


class SaveImageError(ValueError):
    """Not a save image we can clone from: boot cold instead."""


@dataclass(frozen=True)
class SaveImage:
    path: str
    xml: str               # the domain XML in the image
    cookie: bytes          # libvirt's save cookie, as it is (NUL included), b"" if none
    was_running: bool
    body_offset: int       # where qemu's stream starts
    size: int              # the whole file's

    @property
    def body_len(self) -> int:
        return self.size - self.body_offset

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SaveImage":
        """Parse and check a save image: the whole header, the XML, and the
        first bytes of the stream; refuse anything libvirt 9.0 would not
        have written of a domain of ours."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(HEADER_LEN)
                if len(head) < HEADER_LEN:
                    raise SaveImageError(f"{path}: truncated header ({len(head)} of {HEADER_LEN} bytes)")
                magic, fields = head[:len(MAGIC)], _FIELDS.unpack(head[len(MAGIC):])
                if magic == MAGIC_PARTIAL:
                    raise SaveImageError(f"{path}: incomplete (libvirt had not finished writing it)")
                if magic != MAGIC:
                    raise SaveImageError(f"{path}: not a libvirt qemu save image (magic {magic!r})")
                version, data_len, was_running, compressed, cookie_offset, *unused = fields
                if version != VERSION:
                    raise SaveImageError(f"{path}: save image version {version}, only {VERSION} is known")
                if compressed != 0:
                    raise SaveImageError(f"{path}: compressed save image (format {compressed}); only raw")
                if any(unused):
                    raise SaveImageError(f"{path}: unknown header fields set: {unused}")
                if was_running not in (0, 1):
                    raise SaveImageError(f"{path}: was_running {was_running}")
                if not 0 < data_len <= MAX_DATA_LEN:
                    raise SaveImageError(f"{path}: data_len {data_len} out of range")
                if cookie_offset > data_len:
                    raise SaveImageError(f"{path}: cookieOffset {cookie_offset} beyond data_len {data_len}")
                data = fh.read(data_len)
                if len(data) < data_len:
                    raise SaveImageError(f"{path}: truncated XML ({len(data)} of {data_len} bytes)")
                stream = fh.read(len(STREAM_MAGIC))
        except OSError as exc:
            raise SaveImageError(f"{path}: {exc.strerror or exc}") from exc
        xml_len = cookie_offset or data_len
        xml_bytes = data[:xml_len].split(b"\0", 1)[0]
        if len(xml_bytes) == xml_len:
            raise SaveImageError(f"{path}: the domain XML is not NUL-terminated")
        cookie = b""
        if cookie_offset:
            cookie = data[cookie_offset:].split(b"\0", 1)[0] + b"\0"
        if stream != STREAM_MAGIC:
            raise SaveImageError(f"{path}: no qemu migration stream after the header "
                                 f"(found {stream!r})" if stream else f"{path}: truncated: no memory stream")
        try:
            xml = xml_bytes.decode()
            root = ET.fromstring(xml)
        except (UnicodeDecodeError, ET.ParseError) as exc:
            raise SaveImageError(f"{path}: the domain XML does not parse: {exc}") from exc
        if root.tag != "domain" or root.find(f"metadata/{{{METADATA_NS}}}instance") is None:
            raise SaveImageError(f"{path}: not a cowfleet domain (no {METADATA_NS} metadata)")
        return cls(path=path, xml=xml, cookie=cookie, was_running=bool(was_running),
                   body_offset=HEADER_LEN + data_len, size=size)

    # -- writing ----------------------------------------------------------------

    def header(self, xml: str) -> bytes:
        """Header, XML, cookie and padding for ``xml`` in place of the image's."""
        return pack_header(xml, self.cookie, self.was_running)

    def feed(self, fd: int, xml: str) -> None:
        """Write the image to ``fd`` (a pipe or a file) with ``xml`` as its
        domain XML: the new header, then the template's stream as it is
        (spliced when ``fd`` is a pipe, copied otherwise)."""
        pipe = _is_pipe(fd)
        if pipe:
            # 1 MiB (the unprivileged maximum) instead of 64 KiB: 16x fewer
            # wake-ups of qemu and of this thread for the ~94 MB stream
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
        _write_all(fd, self.header(xml))
        with open(self.path, "rb") as src:
            offset, left = self.body_offset, self.body_len
            while left:
                if pipe:
                    n = os.splice(src.fileno(), fd, min(left, PIPE_SIZE), offset_src=offset)
                else:
                    n = os.copy_file_range(src.fileno(), fd, left, offset_src=offset)
                if n == 0:
                    raise SaveImageError(f"{self.path}: shrank while being read")
                offset += n
                left -= n

    def write_copy(self, out: str | os.PathLike, xml: str) -> None:
        """A whole save file for ``xml`` (the fallback to :meth:`feed`, and
        the baseline it was measured against)."""
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.feed(fd, xml)
        finally:
            os.close(fd)


def pack_header(xml: str, cookie: bytes = b"", was_running: bool = True, padding: int = PADDING) -> bytes:
    """libvirt's header for a save image of ``xml`` (as virQEMUSaveDataWrite
    lays it out: XML, cookie, zeros)."""
    xml_bytes = xml.encode() + b"\0"
    data = xml_bytes + cookie
    fields = [VERSION, len(data) + padding, int(was_running), 0, len(xml_bytes) if cookie else 0] + [0] * 14
    return MAGIC + _FIELDS.pack(*fields) + data + bytes(padding)


def write_image(path: str | os.PathLike, xml: str, body: bytes, cookie: bytes = b"") -> None:
    """A save image of ``xml`` with ``body`` as its stream (the fake
    hypervisor's saves and the tests' synthetic images)."""
    with open(path, "wb") as fh:
        fh.write(pack_header(xml, cookie) + body)


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the clone's XML ------------------------------------------------------------

ET.register_namespace(METADATA_KEY, METADATA_NS)


def clone_xml(template_xml: str, spec: DomainSpec, uuid: str | None = None) -> str:
    """The template's domain XML with ``spec``'s identity: name, a new UUID,
    our metadata, SMBIOS serial, disk, seed and console paths, and a VM
    generation ID to be made anew (``<genid/>``: libvirt gives a restored
    domain a fresh one; a Linux guest with the vmgenid driver reseeds its
    RNG when it changes). ``spec``'s NIC is not in it: the caller hot-plugs
    it after the restore (domain.interface_xml).

    The devices must be the template's, same kinds in the same slots:
    qemu's stream holds their state. A template has one disk and no NIC
    (anything else is refused): ``spec``'s seed, like its NIC, is not in
    the XML but hot-plugged after the restore (domain.seed_disk_xml), and
    the waiting template guest takes its identity from it.
    """
    root = ET.fromstring(template_xml)
    dev = root.find("devices")
    if dev is None:
        raise SaveImageError("the template's XML has no devices")

    def one(parent, path: str, what: str):
        el = parent.find(path)
        if el is None:
            raise SaveImageError(f"the template has no {what}")
        return el

    one(root, "name", "name").text = spec.name
    one(root, "uuid", "UUID").text = uuid or str(uuidlib.uuid4())
    genid = root.find("genid")
    if genid is None:
        raise SaveImageError("the template has no <genid/>: its clones would share a VM generation ID")
    genid.text = None
    inst = one(root, f"metadata/{{{METADATA_NS}}}instance", "cowfleet metadata")
    inst.attrib.update(id=spec.instance_id, group=spec.group, node=spec.node)
    serial = root.find("sysinfo/system/entry[@name='serial']")
    if serial is not None:
        serial.text = spec.instance_id
    product = root.find("sysinfo/system/entry[@name='product']")
    if product is not None:        # what libvirt says of the clone (the guest read the template's)
        product.text = "cowfleet instance"
    disks = {d.find("target").get("dev"): d for d in dev.findall("disk") if d.find("target") is not None}
    if set(disks) != {"vda"}:
        raise SaveImageError(f"the template's disks {sorted(disks)} are not one disk "
                             "(a clone's seed is hot-plugged after its restore)")
    one(disks["vda"], "source", "disk source").set("file", spec.disk_path)
    for kind in ("serial", "console"):
        one(dev, f"{kind}[@type='file']/source", f"{kind} file").set("path", spec.console_log)
    if dev.findall("interface"):
        # measured (qemu 7.2, query-rx-filter): a NIC restored from the
        # stream keeps the template's MAC in the device whatever the XML says,
        # and the guest's driver has it in memory: a template is saved with
        # no NIC, and each clone's own is hot-plugged after its restore
        raise SaveImageError("the template has a NIC: its clones would keep its MAC")
    return ET.tostring(root, encoding="unicode")


class Feeder(threading.Thread):
    """Writes a clone's image into a FIFO while libvirt reads it: opening
    the FIFO blocks until libvirt opens it (a restore that fails before
    that is unblocked by :meth:`cancel`)."""

    def __init__(self, image: SaveImage, fifo: str, xml: str):
        super().__init__(daemon=True, name=f"feed {os.path.basename(fifo)}")
        self.image, self.fifo, self.xml = image, fifo, xml
        self.error: BaseException | None = None
        self._opened = threading.Event()

    def run(self) -> None:
        try:
            fd = os.open(self.fifo, os.O_WRONLY)
        except OSError as exc:
            self.error = exc
            return
        finally:
            self._opened.set()
        try:
            self.image.feed(fd, self.xml)
        except BaseException as exc:      # e.g. a broken pipe: the reader gave up, the restore says why
            self.error = exc
        finally:
            os.close(fd)

    def cancel(self) -> None:
        """End the feeder: one libvirt never opened the FIFO for is blocked
        in open (opened here, and closed: its writes then fail), one whose
        reader died ends on the broken pipe."""
        if not self._opened.is_set():
            try:
                fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                fd = None
            self._opened.wait(5)
            if fd is not None:
                os.close(fd)
        self.join(timeout=10)
