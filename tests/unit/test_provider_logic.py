"""The Terraform provider's logic without Terraform: values, schema, plans, diagnostics."""
from __future__ import annotations

import json

import msgpack
import pytest

from cowfleet.client import ApiError
from cowfleet.provider import schema as S
from cowfleet.provider.diagnostics import from_api_error
from cowfleet.provider.diagnostics import ProviderError
from cowfleet.provider.resources import (RESOURCES, InstanceGroup, _describe, is_ready, merge_known,
                                         parse_duration, stalled_for_good, timeout_of)
from cowfleet.provider.values import UNKNOWN, conform, decode, encode


# -- values ----------------------------------------------------------------------

def test_unknown_is_cty_extension_zero_both_ways():
    data = encode({"id": UNKNOWN, "vcpus": 2, "memory_mib": 512, "disk_gib": None, "name": "x"}, S.FLAVOR.type())
    assert b"\xd4\x00\x00" in data                     # fixext1, type 0: cty's unknown
    back = decode(data)
    assert back["id"] is UNKNOWN and back["vcpus"] == 2 and back["disk_gib"] is None


def test_conform_fills_every_attribute_and_nested_block():
    value = conform({"name": "g", "size": 3.0, "placement": {"strategy": "pack"}}, S.GROUP.type())
    assert set(value) == set(S.GROUP.attrs) | set(S.GROUP.blocks)
    assert value["size"] == 3 and isinstance(value["size"], int)
    assert value["placement"] == {"strategy": "pack", "max_per_node": None}
    assert value["timeouts"] is None and value["instances"] is None


def test_encoded_object_has_keys_in_schema_and_null_stays_null():
    obj = msgpack.unpackb(encode(None, S.GROUP.type()))
    assert obj is None
    obj = msgpack.unpackb(encode({"name": "g"}, S.IMAGE.type()))
    assert sorted(obj) == sorted(S.IMAGE.type()[1])


# -- schema ----------------------------------------------------------------------

def test_schema_types_are_cty_json_and_proto_builds():
    from cowfleet.provider import tfplugin5_pb2 as pb
    proto = S.to_proto(pb, S.GROUP)
    attrs = {a.name: a for a in proto.block.attributes}
    assert json.loads(attrs["instances"].type) == ["list", ["object", {
        "id": "string", "node": "string", "rack": "string", "state": "string", "address": "string",
        "mac": "string"}]]
    assert json.loads(attrs["ssh_authorized_keys"].type) == ["list", "string"]
    assert attrs["ssh_authorized_keys"].optional and attrs["ssh_authorized_keys"].computed
    assert attrs["size"].required and attrs["wait_for_ready"].optional and attrs["wait_for_ready"].computed
    blocks = {b.type_name: b for b in proto.block.block_types}
    assert set(blocks) == {"placement", "update_policy", "timeouts"}
    assert blocks["placement"].nesting == pb.Schema.NestedBlock.SINGLE
    assert S.to_proto(pb, S.PROVIDER).block.attributes[1].sensitive      # token


# -- plans -----------------------------------------------------------------------

GROUP = InstanceGroup()


def _state(**over):
    state = conform({"id": "web", "name": "web", "image": "demo", "flavor": "small", "size": 3,
                     "wait_for_ready": True, "persistent": False, "ready_timeout": 900, "start": "boot",
                     "instances": [], "status": {"ready": 3}},
                    S.GROUP.type())
    state.update(over)
    return state


def test_create_plan_fills_defaults_and_marks_computed_unknown():
    proposed = conform({"name": "web", "image": "demo", "flavor": "small", "size": 3,
                        "placement": {"max_per_node": 2}}, S.GROUP.type())
    planned, replace = GROUP.plan(None, proposed)
    assert replace == []
    assert planned["id"] == "web" and planned["wait_for_ready"] is True
    assert planned["instances"] is UNKNOWN and planned["status"] is UNKNOWN
    assert planned["placement"] == {"strategy": "spread", "max_per_node": 2}
    assert planned["update_policy"] is None                # absent block stays absent


def test_unchanged_plan_is_the_prior_state():
    prior = _state()
    planned, replace = GROUP.plan(prior, dict(prior))
    assert planned == prior and replace == []


def test_size_change_is_in_place():
    planned, replace = GROUP.plan(_state(), _state(size=5))
    assert replace == [] and planned["size"] == 5
    assert planned["instances"] is UNKNOWN and planned["status"] is UNKNOWN and planned["id"] == "web"


def test_name_change_replaces():
    planned, replace = GROUP.plan(_state(), _state(name="web2"))
    assert replace == [["name"]] and planned["id"] == "web2"


def test_destroy_plan_is_null():
    assert GROUP.plan(_state(), None) == (None, [])


def test_read_keeps_absent_blocks_absent_when_the_api_has_defaults():
    api = {"name": "web", "image": "demo", "flavor": "small", "size": 3, "user_data": None, "labels": {},
           "placement": {"strategy": "spread", "max_per_node": None},
           "update_policy": {"max_unavailable": 1, "max_surge": 1}, "generation": 1,
           "status": {"phase": "ready", "ready": 3, "observed_generation": 1},
           "instances": [{"id": f"web-{i}", "node": "n1", "rack": "r1", "state": "ready", "image": "demo"}
                         for i in (1, 2, 3)]}
    state = GROUP.to_state(api, GROUP.import_state("web"))
    assert state["placement"] is None and state["update_policy"] is None and state["labels"] is None
    assert state["ssh_authorized_keys"] == []
    assert state["wait_for_ready"] is True
    assert state["instances"][0] == {"id": "web-1", "node": "n1", "rack": "r1", "state": "ready", "address": None,
                                     "mac": None}
    keys = dict(api, ssh_authorized_keys=["ssh-ed25519 AAAA k"])
    assert GROUP.to_state(keys, None)["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]
    assert GROUP.spec(GROUP.to_state(keys, None))["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]
    api["placement"] = {"strategy": "pack", "max_per_node": None}
    assert GROUP.to_state(api, None)["placement"] == {"strategy": "pack", "max_per_node": None}
    assert is_ready(api)
    assert not is_ready(dict(api, generation=2))
    # scaled in: not done while an instance is still terminating
    leaving = {"id": "web-4", "node": "n1", "rack": "r1", "state": "terminating", "image": "demo"}
    assert not is_ready(dict(api, instances=api["instances"] + [leaving]))


def _stuck_group(ready_reason: str, progressing: tuple[str, str]) -> dict:
    return {"name": "web", "size": 1, "generation": 1, "image": "demo", "flavor": "small",
            "instances": [{"id": "web-1", "node": "n1", "rack": "r1", "state": "failed", "image": "demo"}],
            "status": {"phase": "degraded", "ready": 0, "observed_generation": 1, "message": "",
                       "conditions": [
                           {"type": "Ready", "status": "False", "reason": ready_reason,
                            "message": "0/1 ready: 1 instance(s) failed: web-1: no readiness line"},
                           {"type": "Progressing", "status": progressing[0], "reason": progressing[1],
                            "message": ""}]}}


@pytest.mark.parametrize("ready_reason, progressing, for_good", [
    ("InstancesFailed", ("False", "Stalled"), True),
    ("ImageError", ("False", "Stalled"), True),
    ("NoCapacity", ("False", "Stalled"), False),          # a node joining ends it: keep waiting
    ("InstancesFailed", ("True", "RollingUpdate"), False),  # an update is replacing it
    ("GuestsBooting", ("True", "GuestsBooting"), False),
])
def test_a_group_stalled_for_good_ends_the_wait_at_once(ready_reason, progressing, for_good):
    group = _stuck_group(ready_reason, progressing)
    assert bool(stalled_for_good(group)) is for_good

    class Client:
        calls = 0

        def get_group(self, name):
            Client.calls += 1
            if Client.calls > 1 and not for_good:
                return dict(group, status=dict(group["status"], phase="ready", ready=1, conditions=[]),
                            instances=[dict(group["instances"][0], state="ready")])
            return group
    state = {"name": "web", "wait_for_ready": True, "timeouts": {"create": "1s"}}
    if for_good:
        with pytest.raises(ProviderError) as err:
            InstanceGroup().wait(Client(), state, "create")
        diag = err.value.diags[0]
        assert f"cannot become ready: {ready_reason}" in diag.summary and Client.calls == 1
    else:
        assert is_ready(InstanceGroup().wait(Client(), state, "create"))


def test_apply_result_keeps_planned_values_and_fills_unknowns():
    planned = {"size": 3, "labels": None, "status": UNKNOWN, "placement": {"strategy": "pack"}}
    actual = {"size": 3, "labels": {}, "status": {"ready": 3}, "placement": {"strategy": "pack"}}
    assert merge_known(planned, actual) == {"size": 3, "labels": None, "status": {"ready": 3},
                                            "placement": {"strategy": "pack"}}


def test_every_resource_names_its_force_new_attributes():
    assert RESOURCES["cowfleet_instance_group"].block.force_new() == ["name"]
    # path is where the bytes came from; the bytes themselves are sha256
    assert set(RESOURCES["cowfleet_image"].block.force_new()) == {"name", "source_url", "sha256", "format"}


# -- timeouts ------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5m", 90),
                                          ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "5m x", "m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_timeouts_default_and_validation():
    assert timeout_of({"timeouts": None}, "create") == 600
    assert timeout_of({"timeouts": {"create": "2m", "delete": None}}, "create") == 120
    diags = GROUP.validate({"timeouts": {"create": "soon"}})
    assert diags[0].path == ["timeouts", "create"]


# -- diagnostics --------------------------------------------------------------------

def test_api_validation_errors_land_on_the_attribute():
    exc = ApiError(422, {"type": "about:blank", "title": "Unprocessable Entity", "status": 422,
                         "detail": "the request body is not valid",
                         "errors": {"size": ["Must be greater than or equal to 0 and less than or equal to 10000."],
                                    "placement": {"strategy": ["Must be one of: spread, pack."]},
                                    "labels": {"bad key": {"key": ["Invalid value."]}}}})
    diags = from_api_error(exc, S.GROUP, "creating instance group 'web'")
    by_path = {tuple(d.path): d for d in diags}
    assert by_path[("size",)].summary == "Invalid size"
    assert "greater than or equal to 0" in by_path[("size",)].detail
    assert ("placement", "strategy") in by_path
    assert ("labels", ("key", "bad key")) in by_path           # the map element, not its key/value level


def test_api_errors_without_fields_are_one_diagnostic():
    diags = from_api_error(ApiError(409, {"title": "Conflict", "detail": "image 'x' is used by group y"}),
                           S.IMAGE, "deleting image 'x'")
    assert len(diags) == 1 and diags[0].path == [] and "used by group y" in diags[0].detail


def test_stop_ends_a_wait_at_once_keeping_the_state():
    from cowfleet.provider import resources
    from cowfleet.provider.diagnostics import ProviderError

    class Client:                                   # a group that never gets ready
        def get_group(self, name):
            return {"name": name, "size": 3, "generation": 1, "instances": [],
                    "status": {"phase": "provisioning", "ready": 0, "observed_generation": 1}}

    state = _state(status=UNKNOWN, instances=UNKNOWN)
    resources.STOP.set()
    try:
        with pytest.raises(ProviderError) as err:
            GROUP.wait(Client(), state, "create")
    finally:
        resources.STOP.clear()
    assert "interrupted" in err.value.diags[0].summary
    assert err.value.state["status"]["phase"] == "provisioning"


def test_group_persistent_travels_to_the_api_and_back():
    group = RESOURCES["cowfleet_instance_group"]
    state = {"image": "img", "flavor": "small", "size": 2, "labels": None, "user_data": None,
             "persistent": True, "placement": None, "update_policy": None}
    assert group.spec(state)["persistent"] is True
    assert "persistent" not in group.spec(dict(state, persistent=None))     # left to the API's default
    obj = {"name": "g", "image": "img", "flavor": "small", "size": 2, "persistent": True, "status": {}}
    assert group.to_state(obj, None)["persistent"] is True
    assert group.to_state(dict(obj, persistent=False), None)["persistent"] is False


def test_group_ready_timeout_travels_to_the_api_and_back_and_defaults_to_the_apis():
    group = RESOURCES["cowfleet_instance_group"]
    state = {"image": "img", "flavor": "small", "size": 2, "labels": None, "user_data": None,
             "ready_timeout": 60, "placement": None, "update_policy": None}
    assert group.spec(state)["ready_timeout"] == 60
    assert "ready_timeout" not in group.spec(dict(state, ready_timeout=None))     # the API's default
    obj = {"name": "g", "image": "img", "flavor": "small", "size": 2, "ready_timeout": 60, "status": {}}
    assert group.to_state(obj, None)["ready_timeout"] == 60
    planned, _ = GROUP.plan(None, conform({"name": "g", "image": "i", "flavor": "small", "size": 1},
                                          S.GROUP.type()))
    assert planned["ready_timeout"] == 900


def test_group_start_travels_to_the_api_and_back_and_defaults_to_boot():
    group = RESOURCES["cowfleet_instance_group"]
    state = {"image": "img", "flavor": "small", "size": 2, "labels": None, "user_data": None,
             "start": "clone", "placement": None, "update_policy": None}
    assert group.spec(state)["start"] == "clone"
    assert "start" not in group.spec(dict(state, start=None))     # the API's default
    obj = {"name": "g", "image": "img", "flavor": "small", "size": 2, "start": "auto", "status": {}}
    assert group.to_state(obj, None)["start"] == "auto"
    planned, _ = GROUP.plan(None, conform({"name": "g", "image": "i", "flavor": "small", "size": 1},
                                          S.GROUP.type()))
    assert planned["start"] == "boot"


def test_a_timeout_error_says_why_the_group_is_not_ready():
    obj = {"status": {"phase": "degraded", "message": "0/1 ready", "conditions": [
        {"type": "Ready", "status": "False", "reason": "InstancesFailed",
         "message": "0/1 ready: 1 instance(s) failed: no readiness line"}]}}
    assert _describe(obj) == "phase degraded: InstancesFailed: 0/1 ready: 1 instance(s) failed: no readiness line"


# -- plans follow the configuration; images by content ------------------------------

def test_a_block_removed_from_the_configuration_is_planned_absent():
    prior = _state(placement={"strategy": "pack", "max_per_node": None})
    # Terraform proposes the prior block (its attributes are optional+computed) ...
    proposed = dict(prior)
    config = dict(prior, placement=None, instances=None, status=None, id=None)
    planned, replace = GROUP.plan(prior, proposed, config)
    # ... the plan follows the configuration: no block (the API then applies its defaults)
    assert planned["placement"] is None and replace == []
    assert GROUP.spec(planned).get("placement") is None


def test_create_plan_leaves_unset_optional_computed_unknown():
    IMAGE = RESOURCES["cowfleet_image"]
    proposed = conform({"name": "img", "path": "/x.raw"}, S.IMAGE.type())
    planned, _ = IMAGE.plan(None, proposed, proposed)
    assert planned["sha256"] is UNKNOWN and planned["format"] == "raw"
    planned, _ = GROUP.plan(None, conform({"name": "g", "image": "i", "flavor": "small", "size": 1},
                                          S.GROUP.type()))
    assert planned["persistent"] is False      # the API's default, not a null that drifts


def test_image_content_not_path_decides_replacement():
    IMAGE = RESOURCES["cowfleet_image"]
    prior = conform({"id": "img", "name": "img", "path": "/a.raw", "format": "raw", "min_replicas": 1,
                     "wait_for_available": True, "sha256": "a" * 64, "status": "available"}, S.IMAGE.type())
    _, replace = IMAGE.plan(prior, dict(prior, path="/elsewhere/a.raw"), dict(prior, path="/elsewhere/a.raw"))
    assert replace == []
    _, replace = IMAGE.plan(prior, dict(prior, sha256="b" * 64), dict(prior, sha256="b" * 64))
    assert replace == [["sha256"]]
    assert [d.path for d in IMAGE.validate({"sha256": "xyz"})] == [["sha256"]]


def test_upload_of_a_missing_file_is_a_diagnostic_on_path_and_writes_nothing():
    from cowfleet.provider.diagnostics import ProviderError

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"the API was called: {name}")
    IMAGE = RESOURCES["cowfleet_image"]
    state = conform({"name": "img", "path": "/no/such/file.raw", "format": "raw", "min_replicas": 1},
                    S.IMAGE.type())
    with pytest.raises(ProviderError) as err:
        IMAGE.write(NoCalls(), state, None)
    assert err.value.diags[0].path == ["path"]


def test_ssh_keys_unset_means_empty_and_null_never_differs_from_empty():
    prior = dict(_state(), ssh_authorized_keys=[])
    for config_keys in (None, []):
        config = dict(prior, ssh_authorized_keys=config_keys)
        planned, _ = GROUP.plan(prior, dict(prior, ssh_authorized_keys=config_keys or []), config)
        assert planned == prior                          # no change either way
    with_keys = dict(prior, ssh_authorized_keys=["ssh-ed25519 AAAA k"])
    planned, _ = GROUP.plan(with_keys, dict(with_keys), dict(with_keys, ssh_authorized_keys=None))
    assert planned["ssh_authorized_keys"] == []          # removed from the configuration: emptied


# -- no takeovers ---------------------------------------------------------------------

class _Existing:
    """The service's side of If-None-Match: * (service/preconditions.py): a
    create-only PUT of a name that exists is 412; every PUT is recorded."""

    def __init__(self, group_phase="ready"):
        self.puts, self.group_phase = [], group_phase

    def _put(self, kind, name, create_only=False, **spec):
        self.puts.append((kind, name, create_only))
        if create_only:
            raise ApiError(412, {"title": "Precondition Failed", "status": 412,
                                 "detail": f"{kind} '{name}' already exists (If-None-Match: *)"})
        return {"name": name, **spec}

    def put_flavor(self, name, **kw): return self._put("flavor", name, **kw)
    def put_image(self, name, **kw): return self._put("image", name, **kw)
    def put_group(self, name, **kw): return self._put("instance group", name, **kw)

    def get_group(self, name):
        return {"name": name, "status": {"phase": self.group_phase}}


@pytest.mark.parametrize("type_name", ["cowfleet_flavor", "cowfleet_image", "cowfleet_instance_group"])
def test_a_create_never_takes_over_an_existing_object(type_name):
    from cowfleet.provider.diagnostics import ProviderError
    res = RESOURCES[type_name]
    state = conform({"name": "taken", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "format": "raw",
                     "min_replicas": 1, "image": "i", "flavor": "small", "size": 0}, res.block.type())
    client = _Existing()
    with pytest.raises(ProviderError) as err:
        res.write(client, state, None)
    assert [p[2] for p in client.puts] == [True]              # one create-only PUT, nothing updated
    (diag,) = err.value.diags
    assert diag.path == ["name"] and "already exists" in diag.summary
    assert f"terraform import {type_name}.<NAME> taken" in diag.detail
    assert err.value.state is None                            # nothing goes into the state
    # an update of an object in the state is a plain PUT
    res.write(client, state, dict(state))
    assert client.puts[-1][2] is False


def test_a_group_being_deleted_is_waited_for_then_created():
    from cowfleet.provider import resources

    class Deleting(_Existing):
        def _put(self, kind, name, create_only=False, **spec):
            if len(self.puts) >= 2:                           # the deletion has ended
                self.puts.append((kind, name, create_only))
                return {"name": name}
            return super()._put(kind, name, create_only, **spec)

    client = Deleting(group_phase="deleting")
    old, resources.POLL = resources.POLL, 0.01
    try:
        GROUP.write(client, _state(size=0), None)
    finally:
        resources.POLL = old
    assert [p[2] for p in client.puts] == [True, True, True]   # create-only every time


@pytest.mark.parametrize("name", ["small", "medium", "large"])
def test_built_in_flavor_names_are_refused_at_plan(name):
    diags = RESOURCES["cowfleet_flavor"].validate({"name": name, "vcpus": 1, "memory_mib": 64})
    assert [d.path for d in diags] == [["name"]] and "built in" in diags[0].summary
    assert RESOURCES["cowfleet_flavor"].validate({"name": "tiny", "vcpus": 1, "memory_mib": 64}) == []
    assert RESOURCES["cowfleet_flavor"].validate({"name": UNKNOWN, "vcpus": 1, "memory_mib": 64}) == []


# -- defaults follow the configuration ---------------------------------------------------

def test_a_line_removed_from_the_configuration_plans_its_default():
    prior = _state(persistent=True, wait_for_ready=False, ssh_authorized_keys=[],
                   placement={"strategy": "pack", "max_per_node": 2},
                   update_policy={"max_unavailable": 0, "max_surge": 3})
    # Terraform proposes the prior values of optional+computed attributes the configuration leaves null
    config = dict(prior, persistent=None, wait_for_ready=None, id=None, instances=None, status=None,
                  placement={"strategy": None, "max_per_node": 2},
                  update_policy={"max_unavailable": 0, "max_surge": None})
    planned, replace = GROUP.plan(prior, dict(prior), config)
    assert replace == []
    assert planned["persistent"] is False and planned["wait_for_ready"] is True
    assert planned["placement"] == {"strategy": "spread", "max_per_node": 2}
    assert planned["update_policy"] == {"max_unavailable": 0, "max_surge": 1}
    # given in the configuration, a value stays as it is
    same, _ = GROUP.plan(prior, dict(prior), dict(prior, id=None, instances=None, status=None))
    assert same == prior


@pytest.mark.parametrize("type_name,attr,prior_value,default,replaces", [
    ("cowfleet_flavor", "disk_gib", 5, 1, False),
    ("cowfleet_image", "min_replicas", 3, 2, False),
    ("cowfleet_image", "wait_for_available", False, True, False),
    ("cowfleet_image", "format", "qcow2", "raw", True),
])
def test_image_and_flavor_defaults_follow_the_configuration(type_name, attr, prior_value, default, replaces):
    res = RESOURCES[type_name]
    prior = conform({"id": "x", "name": "x", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "format": "raw",
                     "min_replicas": 2, "wait_for_available": True, "source_url": "file:///x.raw",
                     "sha256": "a" * 64, "status": "available"}, res.block.type())
    prior[attr] = prior_value
    config = dict(prior, **{attr: None})
    planned, replace = res.plan(prior, dict(prior), config)
    assert planned[attr] == default
    assert replace == ([[attr]] if replaces else [])


# -- Terraform-only changes are cosmetic ----------------------------------------------------

class _NoCalls:
    def __getattr__(self, name):
        raise AssertionError(f"the API was called: {name}")


def _ready_state(**over):
    return _state(instances=[{"id": "web-1", "node": "n1", "rack": "r1", "state": "ready",
                              "address": "10.0.0.2", "mac": "52:54:00:00:00:01"}],
                  ssh_authorized_keys=[], **over)


def test_wait_changes_keep_computed_values_and_call_nothing():
    prior = _ready_state()
    change = {"wait_for_ready": False, "timeouts": {"create": "20m", "update": None, "delete": None}}
    planned, replace = GROUP.plan(prior, dict(prior, **change), dict(prior, **change))
    assert replace == [] and planned == dict(prior, **change)       # nothing unknown
    assert GROUP.apply(_NoCalls(), prior, planned) == planned
    assert not GROUP.keeps_prior_timeouts(planned, dict(prior, **change))


def test_timeouts_alone_plan_no_change_as_sdkv2_does():
    prior = _ready_state()                                  # e.g. just imported: no timeouts
    config = dict(prior, timeouts={"create": "20m", "update": None, "delete": None})
    planned, replace = GROUP.plan(prior, dict(config), config)
    assert planned == prior and replace == []               # no change: Terraform plans a no-op
    assert GROUP.keeps_prior_timeouts(planned, config)      # the server flags it (legacy_type_system)
    # with a real change, the configured timeouts come along
    planned, _ = GROUP.plan(prior, dict(config, size=4), dict(config, size=4))
    assert planned["timeouts"] == config["timeouts"] and not GROUP.keeps_prior_timeouts(planned, config)


def test_image_path_timeouts_and_wait_are_cosmetic():
    image = RESOURCES["cowfleet_image"]
    prior = conform({"id": "img", "name": "img", "path": "/a.raw", "format": "raw", "min_replicas": 1,
                     "wait_for_available": True, "sha256": "a" * 64, "status": "available",
                     "replicas": [{"node": "s1", "rack": "r1"}]}, S.IMAGE.type())
    new = dict(prior, path="/b.raw", wait_for_available=False, timeouts={"create": "1m", "update": None,
                                                                        "delete": None})
    planned, replace = image.plan(prior, dict(new), dict(new))
    assert replace == [] and planned == new
    assert image.apply(_NoCalls(), prior, planned) == planned


@pytest.mark.parametrize("change,instances_unknown", [
    ({"labels": {"app": "web"}}, False), ({"user_data": "#!/bin/sh\n"}, False),
    ({"update_policy": {"max_unavailable": 0, "max_surge": 1}}, False),
    ({"size": 4}, True), ({"image": "other"}, True), ({"flavor": "large"}, True), ({"persistent": True}, True),
    ({"placement": {"strategy": "pack", "max_per_node": None}}, True), ({"image": UNKNOWN}, True),
])
def test_instances_are_unknown_only_when_what_makes_them_changes(change, instances_unknown):
    prior = _state(ssh_authorized_keys=[])
    planned, _ = GROUP.plan(prior, dict(prior, **change), dict(prior, **change))
    assert (planned["instances"] is UNKNOWN) is instances_unknown
    assert planned["status"] is UNKNOWN                  # the generation moves: status is read again


def test_a_group_write_waits_out_a_deletion_by_its_problem_type(monkeypatch):
    """The provider retries PUT while the API answers 409 group-being-deleted
    (by type: the detail's words do not matter), and not on other 409s."""
    from cowfleet.protocol import ProblemType
    from cowfleet.provider import resources
    monkeypatch.setattr(resources, "POLL", 0.01)
    state = {"name": "web", "image": "i", "flavor": "small", "size": 1, "labels": {}}

    class Client:
        def __init__(self, answers):
            self.answers, self.puts = list(answers), 0

        def put_group(self, name, **spec):
            self.puts += 1
            if self.answers:
                raise self.answers.pop(0)

    deleting = ApiError(409, {"type": ProblemType.GROUP_BEING_DELETED, "title": "Conflict", "detail": "reworded"})
    client = Client([deleting, deleting])
    GROUP.write(client, state, None)
    assert client.puts == 3
    other = ApiError(409, {"type": ProblemType.FLAVOR_IN_USE, "title": "Conflict",
                           "detail": "instance group 'web' is being deleted"})
    client = Client([other])
    with pytest.raises(ApiError):
        GROUP.write(client, state, None)
    assert client.puts == 1


# -- plan-time validation with the API's own schemas ----------------------------------

GOOD_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAvnTQMWfDyeLiW0UnQnQUp2WGnZ0ZVX+ZA/pc2ZeH0d a@b")


def _group_config(**over) -> dict:
    config = conform({"name": "web", "image": "demo", "flavor": "small", "size": 2}, S.GROUP.type())
    config.update(over)
    return config


def test_every_value_the_api_refuses_is_a_diagnostic_on_its_attribute_at_plan():
    config = _group_config(name="Web_1", size=-4, placement={"strategy": "spred", "max_per_node": 0},
                           update_policy={"max_unavailable": 0, "max_surge": 0},
                           labels={"bad key": "v", "ok": "x\n"}, ssh_authorized_keys=[GOOD_KEY, "ssh-rsa nope"],
                           user_data="x" * 65537, persistent=True)
    by_path = {tuple(d.path): d for d in RESOURCES["cowfleet_instance_group"].validate(config)}
    assert set(by_path) == {("name",), ("size",), ("placement", "strategy"), ("placement", "max_per_node"),
                            ("update_policy", "max_unavailable"), ("labels", ("key", "bad key")),
                            ("labels", ("key", "ok")), ("ssh_authorized_keys", 1), ("user_data",)}
    assert by_path[("size",)].summary == "Invalid size"
    assert "greater than or equal to 0" in by_path[("size",)].detail
    assert by_path[("placement", "strategy")].summary == "Invalid placement.strategy"
    assert "spread, pack" in by_path[("placement", "strategy")].detail
    assert "DNS label" in by_path[("name",)].detail
    assert by_path[("ssh_authorized_keys", 1)].summary == "Invalid ssh_authorized_keys[1]"


@pytest.mark.parametrize("type_name,config,paths", [
    ("cowfleet_flavor", {"name": "f", "vcpus": 0, "memory_mib": 32, "disk_gib": 2.5},
     {("vcpus",), ("memory_mib",), ("disk_gib",)}),
    ("cowfleet_image", {"name": "i", "source_url": "ftp://host/x", "format": "vmdk", "min_replicas": 0,
                        "labels": {"-x": "1"}},
     {("source_url",), ("format",), ("min_replicas",), ("labels", ("key", "-x"))}),
])
def test_flavor_and_image_values_are_judged_by_the_api_schemas(type_name, config, paths):
    config = conform(config, RESOURCES[type_name].block.type())
    assert {tuple(d.path) for d in RESOURCES[type_name].validate(config)} == paths


def test_a_good_configuration_and_unknown_values_are_not_judged():
    assert RESOURCES["cowfleet_instance_group"].validate(_group_config(
        labels={"tier": "web"}, ssh_authorized_keys=[GOOD_KEY], placement={"strategy": "pack", "max_per_node": None},
        update_policy={"max_unavailable": 0, "max_surge": None})) == []
    # computed at apply (another resource's attribute, a variable at validate time): left for later
    assert RESOURCES["cowfleet_instance_group"].validate(_group_config(
        name=UNKNOWN, image=UNKNOWN, size=UNKNOWN, labels=UNKNOWN, placement=UNKNOWN,
        ssh_authorized_keys=[UNKNOWN, "not a key"], update_policy={"max_unavailable": 0, "max_surge": UNKNOWN})) == []
    # a map with one unknown value: the known ones are still judged
    diags = RESOURCES["cowfleet_instance_group"].validate(_group_config(labels={"a": UNKNOWN, "b c": "1"}))
    assert [d.path for d in diags] == [["labels", ("key", "b c")]]


def test_plan_time_rules_are_the_apis_own():
    """The provider's rule is the service's schema object, not a copy: the
    same messages the API answers with (422) for the same values."""
    from marshmallow import ValidationError

    from cowfleet.specs import GroupSpecSchema
    with pytest.raises(ValidationError) as err:
        GroupSpecSchema().load({"image": "demo", "flavor": "small", "size": 20000})
    diags = RESOURCES["cowfleet_instance_group"].validate(_group_config(size=20000))
    assert [d.detail for d in diags] == err.value.messages["size"]


# -- protocol hygiene -------------------------------------------------------------------

def test_the_timeout_caps_the_whole_operation_not_each_wait(monkeypatch):
    """A group create that first waits out a deletion, then waits for
    readiness: both waits share the create timeout (before, each had its own,
    so an apply could take twice the timeout)."""
    import time

    from cowfleet.protocol import ProblemType
    from cowfleet.provider import resources
    from cowfleet.provider.diagnostics import ProviderError
    monkeypatch.setattr(resources, "POLL", 0.02)
    deleting = ApiError(409, {"type": ProblemType.GROUP_BEING_DELETED, "title": "Conflict", "detail": "x"})

    class Client:
        created = None

        def put_group(self, name, **spec):
            if time.monotonic() < self.created:        # the old group goes 0.4 s after the first PUT
                raise deleting

        def get_group(self, name):                     # then one that never gets ready
            return {"name": name, "size": 1, "generation": 1, "instances": [],
                    "status": {"phase": "provisioning", "ready": 0, "observed_generation": 1}}

    client = Client()
    planned, _ = GROUP.plan(None, _state(size=1, timeouts={"create": "700ms"}))
    t0 = time.monotonic()
    client.created = t0 + 0.4
    with pytest.raises(ProviderError) as err:
        GROUP.apply(client, None, planned)
    took = time.monotonic() - t0
    assert "not ready after 1s" in err.value.diags[0].summary       # 0.7 s, as "%.0f"
    assert 0.7 <= took < 1.0, took                                  # not 0.4 + 0.7
    assert err.value.state["status"]["phase"] == "provisioning"      # what was made stays in the state


def test_an_interrupt_stops_an_upload_and_removes_the_image_it_made(tmp_path):
    from cowfleet.provider import resources
    from cowfleet.provider.diagnostics import ProviderError
    data = tmp_path / "disk.raw"
    data.write_bytes(b"\0" * (3 << 20))

    class Client:
        deleted = []

        def put_image(self, name, **kw):
            pass

        def upload_image(self, name, path, sha256=None, progress=None):
            progress(1 << 20, 3 << 20)                 # the first MiB went; then Ctrl-C
            resources.STOP.set()
            progress(2 << 20, 3 << 20)

        def delete_image(self, name):
            self.deleted.append(name)

    state = conform({"name": "up", "path": str(data), "format": "raw", "min_replicas": 1}, S.IMAGE.type())
    try:
        with pytest.raises(ProviderError) as err:
            RESOURCES["cowfleet_image"].write(Client(), state, None)
    finally:
        resources.STOP.clear()
    assert "interrupted while uploading image 'up'" in err.value.diags[0].summary
    assert Client.deleted == ["up"]


def test_an_object_is_ours_after_a_lost_answer_only_if_it_holds_exactly_what_we_sent():
    from cowfleet.provider.resources import _holds
    sent = GROUP.spec(_state(size=0, labels={"a": "1"}, placement={"strategy": "spread", "max_per_node": None}))
    api = dict(sent, placement={"strategy": "spread", "max_per_node": None}, user_data=None, generation=1,
               persistent=False, status={"phase": "ready"})
    assert _holds(api, sent)
    assert not _holds(dict(api, labels={"a": "1", "owner": "other"}), sent)      # someone else's labels
    assert not _holds(dict(api, placement={"strategy": "spread", "max_per_node": 2}), sent)
    assert not _holds(dict(api, size=3), sent)
    lost = ApiError(412, {"title": "Precondition Failed"}, resent=True)
    assert GROUP.made_by_lost_attempt(lost, api, sent)
    assert not GROUP.made_by_lost_attempt(lost, dict(api, generation=2), sent)     # changed since
    assert not GROUP.made_by_lost_attempt(ApiError(412, {}), api, sent)            # no answer was lost
