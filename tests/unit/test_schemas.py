"""Input schemas: defaults, and every rejection names the offending field."""
from __future__ import annotations

import pytest
from marshmallow import ValidationError

from cowfleet.specs import GroupSpecSchema
from cowfleet.specs import ImageSpecSchema


def group(**over):
    spec = {"image": "demo", "flavor": "small", "size": 3}
    spec.update(over)
    return spec


def load_group(spec):
    return GroupSpecSchema().load(spec)


def group_errors(spec) -> dict:
    with pytest.raises(ValidationError) as exc:
        load_group(spec)
    return exc.value.messages


def image_errors(spec) -> dict:
    with pytest.raises(ValidationError) as exc:
        ImageSpecSchema().load(spec)
    return exc.value.messages


# --- GroupSpecSchema: valid specs -------------------------------------------------

def test_group_minimal_spec_gets_all_defaults():
    data = load_group(group())
    assert data == {
        "image": "demo", "flavor": "small", "size": 3,
        "placement": {"strategy": "spread", "max_per_node": None},
        "user_data": None,
        "labels": {},
        "update_policy": {"max_unavailable": 1, "max_surge": 1},
        "persistent": False,
        "ssh_authorized_keys": [],
        "ready_timeout": 900,
        "start": "boot",
    }


@pytest.mark.parametrize("value", [10, 60, 86400])
def test_group_ready_timeout_accepted(value):
    assert load_group(group(ready_timeout=value))["ready_timeout"] == value


@pytest.mark.parametrize("value", [0, 9, 86401, -1, 1.5, "60", None, True])
def test_group_bad_ready_timeout_is_refused_on_the_field(value):
    assert "ready_timeout" in group_errors(group(ready_timeout=value))


@pytest.mark.parametrize("value", ["auto", "clone", "boot"])
def test_group_start_accepted(value):
    assert load_group(group(start=value))["start"] == value


@pytest.mark.parametrize("value", ["warm", "", "Clone", None, 1, True])
def test_group_bad_start_is_refused_on_the_field(value):
    assert "start" in group_errors(group(start=value))


def test_group_defaults_are_not_shared_between_loads():
    a = load_group(group())
    a["labels"]["x"] = "y"
    a["placement"]["strategy"] = "pack"
    b = load_group(group())
    assert b["labels"] == {}
    assert b["placement"]["strategy"] == "spread"


def test_group_partial_placement_fills_missing_defaults():
    data = load_group(group(placement={"strategy": "pack"}))
    assert data["placement"] == {"strategy": "pack", "max_per_node": None}
    data = load_group(group(placement={"max_per_node": 2}))
    assert data["placement"] == {"strategy": "spread", "max_per_node": 2}


def test_group_full_spec_is_kept():
    spec = group(size=0, placement={"strategy": "pack", "max_per_node": 5},
                 user_data="#!/bin/sh\necho hi\n", labels={"team": "web", "env": ""},
                 update_policy={"max_unavailable": 0, "max_surge": 3}, persistent=True,
                 ssh_authorized_keys=[KEY_ED25519, KEY_RSA + " ops@example"], ready_timeout=120,
                     start="clone")
    assert load_group(spec) == spec


@pytest.mark.parametrize("size", [0, 1, 10_000])
def test_group_size_bounds_accepted(size):
    assert load_group(group(size=size))["size"] == size


@pytest.mark.parametrize("name", ["a", "0", "a-b", "web-01", "a" * 63])
def test_group_valid_names(name):
    data = load_group(group(image=name, flavor=name))
    assert data["image"] == data["flavor"] == name


# --- GroupSpecSchema: rejections --------------------------------------------------

@pytest.mark.parametrize("size", [-1, 10_001, 10**30])
def test_group_size_out_of_range(size):
    assert list(group_errors(group(size=size))) == ["size"]


@pytest.mark.parametrize("size", ["3", 3.5, 3.0, True, False, None, [3], {"n": 3}])
def test_group_size_must_be_a_real_integer(size):
    assert list(group_errors(group(size=size))) == ["size"]


@pytest.mark.parametrize("missing", ["image", "flavor", "size"])
def test_group_required_fields(missing):
    spec = group()
    del spec[missing]
    assert list(group_errors(spec)) == [missing]


def test_group_unknown_top_level_field():
    errors = group_errors(group(replicas=3))
    assert list(errors) == ["replicas"]


def test_group_unknown_nested_field_in_placement():
    errors = group_errors(group(placement={"strategy": "spread", "zone": "a"}))
    assert list(errors) == ["placement"]
    assert "zone" in errors["placement"]


def test_group_unknown_nested_field_in_update_policy():
    errors = group_errors(group(update_policy={"batch": 2}))
    assert list(errors) == ["update_policy"]
    assert "batch" in errors["update_policy"]


@pytest.mark.parametrize("strategy", ["random", "SPREAD", "", None, 1])
def test_group_bad_strategy(strategy):
    errors = group_errors(group(placement={"strategy": strategy}))
    assert list(errors) == ["placement"]
    assert "strategy" in errors["placement"]


@pytest.mark.parametrize("value", [0, -1, 10_001, "2", 1.5, True])
def test_group_bad_max_per_node(value):
    errors = group_errors(group(placement={"max_per_node": value}))
    assert "max_per_node" in errors["placement"]


@pytest.mark.parametrize("policy", [{"max_unavailable": -1}, {"max_surge": "1"}, {"max_surge": 10_001}])
def test_group_bad_update_policy(policy):
    errors = group_errors(group(update_policy=policy))
    assert list(errors) == ["update_policy"]
    assert set(errors["update_policy"]) == set(policy)


@pytest.mark.parametrize("field", ["image", "flavor"])
@pytest.mark.parametrize("name", ["Demo", "DEMO", "-demo", "demo-", "a" * 64, "", "de_mo",
                                  "de.mo", "de mo", "dé", 5, None])
def test_group_bad_names(field, name):
    assert list(group_errors(group(**{field: name}))) == [field]


@pytest.mark.parametrize("field", ["image", "flavor"])
def test_group_name_with_trailing_newline_rejected(field):
    assert list(group_errors(group(**{field: "demo\n"}))) == [field]


@pytest.mark.parametrize("labels", [{"a": 1}, {"a": None}, {"a": True}, {"a": ["x"]}, {"a": {"b": "c"}}])
def test_group_label_values_must_be_strings(labels):
    errors = group_errors(group(labels=labels))
    assert list(errors) == ["labels"]
    assert "a" in errors["labels"]


@pytest.mark.parametrize("labels", [{"": "x"}, {"k" * 64: "x"}, {"a": "v" * 256}])
def test_group_label_lengths(labels):
    assert list(group_errors(group(labels=labels))) == ["labels"]


@pytest.mark.parametrize("labels", [["a"], "a=b", 3])
def test_group_labels_must_be_an_object(labels):
    assert list(group_errors(group(labels=labels))) == ["labels"]


def test_group_user_data_length_limit():
    assert load_group(group(user_data="x" * 65536))["user_data"] == "x" * 65536
    assert list(group_errors(group(user_data="x" * 65537))) == ["user_data"]


def test_group_several_errors_are_all_reported():
    errors = group_errors({"image": "BAD", "flavor": "-x", "size": -1, "extra": 1})
    assert set(errors) == {"image", "flavor", "size", "extra"}


# --- ImageSpecSchema --------------------------------------------------------------

def test_image_empty_spec_gets_defaults():
    assert ImageSpecSchema().load({}) == {"source_url": None, "format": "raw",
                                          "min_replicas": 2, "labels": {}}


@pytest.mark.parametrize("url", ["file:///var/tmp/demo.raw", "http://example.org/a.img",
                                 "https://example.org:8443/x/y.qcow2?sig=1", None])
def test_image_valid_source_urls(url):
    assert ImageSpecSchema().load({"source_url": url})["source_url"] == url


def test_image_full_spec_is_kept():
    spec = {"source_url": "file:///srv/img.qcow2", "format": "qcow2", "min_replicas": 16,
            "labels": {"os": "debian"}}
    assert ImageSpecSchema().load(spec) == spec


@pytest.mark.parametrize("url", ["ftp://example.org/a.img", "ftp:///a.img", "gopher://h/x",
                                 "/var/tmp/demo.raw", "demo.raw", "s3://bucket/key"])
def test_image_bad_scheme(url):
    assert list(image_errors({"source_url": url})) == ["source_url"]


@pytest.mark.parametrize("url", ["file:demo.raw", "file:", "file:relative/path"])
def test_image_file_url_needs_absolute_path(url):
    assert list(image_errors({"source_url": url})) == ["source_url"]


def test_image_file_url_with_host_rejected():
    assert list(image_errors({"source_url": "file://var/tmp/demo.raw"})) == ["source_url"]


@pytest.mark.parametrize("url", ["http://", "https:///path", "http:/x"])
def test_image_http_url_needs_host(url):
    assert list(image_errors({"source_url": url})) == ["source_url"]


def test_image_source_url_length_limit():
    url = "https://h/" + "a" * 2039
    assert len(url) == 2049
    assert list(image_errors({"source_url": url})) == ["source_url"]
    assert ImageSpecSchema().load({"source_url": url[:-1]})["source_url"] == url[:-1]


@pytest.mark.parametrize("fmt", ["vmdk", "RAW", "", None])
def test_image_bad_format(fmt):
    assert list(image_errors({"format": fmt})) == ["format"]


@pytest.mark.parametrize("n", [0, 17, -1, "2", 2.0, True])
def test_image_bad_min_replicas(n):
    assert list(image_errors({"min_replicas": n})) == ["min_replicas"]


def test_image_unknown_field():
    errors = image_errors({"unknown-field": 1})
    assert list(errors) == ["unknown-field"]


def test_image_label_values_must_be_strings():
    errors = image_errors({"labels": {"os": 7}})
    assert list(errors) == ["labels"]


# --- ssh_authorized_keys -------------------------------------------------------------

def _key(kind: str, body: bytes = b"\x00" * 32) -> str:
    import base64
    import struct
    blob = struct.pack(">I", len(kind)) + kind.encode() + body
    return f"{kind} {base64.b64encode(blob).decode()}"


KEY_ED25519 = _key("ssh-ed25519") + " alice@laptop"
KEY_RSA = _key("ssh-rsa", b"\x00\x00\x00\x03\x01\x00\x01" + b"\x00" * 64)


@pytest.mark.parametrize("keys,words", [
    (["ssh-ed25519"], "TYPE BASE64"),
    (["ssh-foo AAAA"], "TYPE BASE64"),
    (["ssh-ed25519 !!!notbase64"], "base64"),
    ([_key("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1)], "is a 'ssh-rsa' key"),
    (["-----BEGIN OPENSSH PRIVATE KEY-----"], "TYPE BASE64"),
    ([KEY_ED25519 + "\nssh-rsa AAAA"], "one line"),
    ([KEY_ED25519] * 33, "at most 32"),
    ("ssh-ed25519 AAAA", "list"),
])
def test_group_bad_ssh_keys_are_refused_on_the_field(keys, words):
    with pytest.raises(ValidationError) as err:
        load_group(group(ssh_authorized_keys=keys))
    assert "ssh_authorized_keys" in err.value.messages
    assert words.lower() in str(err.value.messages["ssh_authorized_keys"]).lower()
