"""libvirt's save image (agents/compute/savefile.py) on synthetic files laid
out as libvirt 9.0 writes them: read, checked, refused, restreamed."""
from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ET

import pytest

from cowfleet.agents.compute.domain import METADATA_NS, DomainSpec, domain_xml
from cowfleet.agents.compute.savefile import (
    HEADER_LEN, MAGIC, PIPE_SIZE, STREAM_MAGIC, Feeder, SaveImage, SaveImageError, clone_xml, pack_header, write_image)

COOKIE = b"<cookie>\n  <cpu mode='custom'/>\n</cookie>\n\0"
BODY = STREAM_MAGIC + os.urandom(300_000)


def spec(**over) -> DomainSpec:
    base = dict(name="cf-n1--tmpl", instance_id="tmpl", group="g", node="n1", vcpus=1, memory_mib=128,
                disk_path="/t/tmpl.qcow2", console_log="/t/tmpl.log", network="none",
                template=True)
    base.update(over)
    return DomainSpec(**base)


def template_xml(**over) -> str:
    # as libvirt keeps it: a UUID and the generation ID it made
    xml = domain_xml(spec(**over))
    xml = xml.replace("</name>", "</name><uuid>0e79f727-b966-4e1a-a664-8bee0d50948f</uuid>")
    return xml.replace("<genid/>", "<genid>e36a7e30-cbeb-4a66-aa53-d756797ed993</genid>")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "t.save"
    write_image(path, template_xml(), BODY, COOKIE)
    return path


def test_reads_an_image_as_libvirt_writes_it(image):
    img = SaveImage.read(image)
    assert ET.fromstring(img.xml).findtext("name") == "cf-n1--tmpl"
    assert img.cookie == COOKIE and img.was_running
    assert img.body_offset == HEADER_LEN + len(template_xml().encode()) + 1 + len(COOKIE) + 64 * 1024
    assert img.body_len == len(BODY)
    raw = image.read_bytes()
    version, data_len, running, compressed, cookie_offset = struct.unpack("<5I", raw[16:36])
    assert (raw[:16], version, running, compressed) == (MAGIC, 2, 1, 0)
    assert raw[HEADER_LEN + cookie_offset - 1] == 0 and raw[img.body_offset:] == BODY


def rewrite(path, offset: int, data: bytes):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


@pytest.mark.parametrize("offset, data, says", [
    (0, b"LibvirtQemudPart", "incomplete"),
    (0, b"QFI\xfb" + bytes(12), "not a libvirt qemu save image"),
    (16, struct.pack("<I", 3), "version 3, only 2"),
    (16, struct.pack("<I", 1), "version 1, only 2"),
    (16 + 12, struct.pack("<I", 1), "compressed"),
    (16 + 40, struct.pack("<I", 7), "unknown header fields"),
    (16 + 4, struct.pack("<I", 1 << 30), "data_len"),
    (16 + 16, struct.pack("<I", 1 << 19), "cookieOffset"),
])
def test_a_header_this_libvirt_did_not_write_is_refused(image, offset, data, says):
    rewrite(image, offset, data)
    with pytest.raises(SaveImageError, match=says):
        SaveImage.read(image)


@pytest.mark.parametrize("keep, says", [
    (0, "truncated header"), (50, "truncated header"), (HEADER_LEN + 100, "truncated XML"),
    (-len(BODY), "no memory stream"),
])
def test_a_truncated_image_is_refused(image, keep, says):
    raw = image.read_bytes()
    image.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(SaveImageError, match=says):
        SaveImage.read(image)


def test_a_foreign_domain_or_a_broken_stream_is_refused(tmp_path):
    path = tmp_path / "x.save"
    foreign = template_xml().replace(METADATA_NS, "urn:someone-else")
    write_image(path, foreign, BODY)
    with pytest.raises(SaveImageError, match="not a cowfleet domain"):
        SaveImage.read(path)
    write_image(path, "<domain><name>x", BODY)
    with pytest.raises(SaveImageError, match="does not parse"):
        SaveImage.read(path)
    write_image(path, template_xml(), b"QEVM\x00\x00\x00\x02" + BODY[8:])
    with pytest.raises(SaveImageError, match="no qemu migration stream"):
        SaveImage.read(path)
    # an XML with no NUL: it runs into the stream
    raw = bytearray(pack_header(template_xml()) + BODY)
    raw[HEADER_LEN:HEADER_LEN + 64 * 1024 + len(template_xml()) + 1] = b"x" * (64 * 1024 + len(template_xml()) + 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(SaveImageError, match="NUL"):
        SaveImage.read(path)
    with pytest.raises(SaveImageError, match="No such file"):
        SaveImage.read(tmp_path / "absent.save")


def clone(n: int, **over) -> DomainSpec:
    base = dict(name=f"cf-n1--c{n}", instance_id=f"c{n}", disk_path=f"/t/c{n}.qcow2", console_log=f"/t/c{n}.log",
                network="tap", tap=f"cfc{n}", mac=f"02:00:00:00:01:0{n}", seed_path=f"/t/c{n}.iso")
    return spec(**{**base, **over})


def test_a_clone_gets_its_own_identity():
    a = ET.fromstring(clone_xml(template_xml(), clone(1)))
    b = ET.fromstring(clone_xml(template_xml(), clone(2)))
    for root, n in ((a, 1), (b, 2)):
        assert root.findtext("name") == f"cf-n1--c{n}"
        meta = root.find(f"metadata/{{{METADATA_NS}}}instance")
        assert (meta.get("id"), meta.get("group"), meta.get("node")) == (f"c{n}", "g", "n1")
        assert root.findtext("sysinfo/system/entry[@name='serial']") == f"c{n}"
        disks = {d.find("target").get("dev"): d.find("source").get("file") for d in root.iter("disk")}
        assert disks == {"vda": f"/t/c{n}.qcow2"}         # the seed is hot-plugged after the restore
        assert root.findtext("sysinfo/system/entry[@name='product']") == "cowfleet instance"
        assert {e.get("path") for e in root.iter("source") if e.get("path")} == {f"/t/c{n}.log"}
        assert root.find("devices/interface") is None     # hot-plugged after the restore
        genid = root.find("genid")
        assert genid is not None and not genid.text      # libvirt makes a new one
    assert a.findtext("uuid") != b.findtext("uuid")
    assert "0e79f727-b966-4e1a-a664-8bee0d50948f" not in {a.findtext("uuid"), b.findtext("uuid")}
    assert ET.tostring(a.find("memory")) == ET.tostring(ET.fromstring(template_xml()).find("memory"))


@pytest.mark.parametrize("template, clone_spec, says", [
    (dict(seed_path="/t/tmpl.iso"), clone(1), "disks"),
    (dict(network="user", mac="02:00:00:00:00:01"), clone(1), "has a NIC"),
    (dict(template=False), clone(1), "genid"),
])
def test_a_clone_needs_the_templates_devices(template, clone_spec, says):
    with pytest.raises(SaveImageError, match=says):
        clone_xml(template_xml(**template), clone_spec)


@pytest.mark.parametrize("via", ["pipe", "file"])
def test_feed_writes_the_clones_header_then_the_templates_stream(image, tmp_path, via):
    img = SaveImage.read(image)
    xml = clone_xml(img.xml, clone(1))
    out = tmp_path / "c1.save"
    if via == "file":
        img.write_copy(out, xml)
    else:
        os.mkfifo(tmp_path / "fifo")
        feeder = Feeder(img, str(tmp_path / "fifo"), xml)
        feeder.start()
        with open(tmp_path / "fifo", "rb") as fh:
            out.write_bytes(fh.read())
        feeder.join()
        assert feeder.error is None
    got = SaveImage.read(out)
    assert got.xml == xml and got.cookie == COOKIE and got.body_len == len(BODY)
    assert out.read_bytes()[got.body_offset:] == BODY


def test_a_feeder_whose_reader_never_comes_or_goes_away_ends(tmp_path):
    # a body larger than the pipe (PIPE_SIZE): the feeder is still writing when
    # the reader goes, so its write fails (a body the pipe holds whole could
    # be written before the reader closes, and no write would fail)
    big = tmp_path / "big.save"
    write_image(big, template_xml(), BODY * (4 * PIPE_SIZE // len(BODY) + 1), COOKIE)
    img = SaveImage.read(big)
    xml = clone_xml(img.xml, clone(1))
    os.mkfifo(tmp_path / "never")
    feeder = Feeder(img, str(tmp_path / "never"), xml)
    feeder.start()
    feeder.cancel()
    assert not feeder.is_alive()
    os.mkfifo(tmp_path / "gone")
    feeder = Feeder(img, str(tmp_path / "gone"), xml)
    feeder.start()
    with open(tmp_path / "gone", "rb") as fh:
        fh.read(HEADER_LEN)          # a reader that stops early (libvirt refusing the header)
    feeder.cancel()
    assert not feeder.is_alive() and isinstance(feeder.error, BrokenPipeError)
