"""The provider's schemas, as plain Python: attributes, nested blocks, types.

Types use cty's JSON notation (what the protocol carries): ``"string"``,
``"number"``, ``"bool"``, ``["list", T]``, ``["map", T]``,
``["object", {name: T}]``. ``to_proto`` turns a schema into the protobuf
message lazily, so unit tests need neither grpc nor protobuf.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cowfleet import defaults as D


@dataclass(frozen=True)
class Attr:
    type: Any
    required: bool = False
    optional: bool = False
    computed: bool = False
    sensitive: bool = False
    force_new: bool = False      # a change replaces the object
    description: str = ""


@dataclass(frozen=True)
class Nested:
    block: "Block"
    nesting: str = "SINGLE"      # SINGLE: one optional block, null when absent
    min_items: int = 0
    max_items: int = 0


@dataclass(frozen=True)
class Block:
    attrs: dict[str, Attr] = field(default_factory=dict)
    blocks: dict[str, Nested] = field(default_factory=dict)
    description: str = ""

    def type(self) -> list:
        """The cty object type of a value of this block."""
        t = {name: a.type for name, a in self.attrs.items()}
        for name, nb in self.blocks.items():
            inner = nb.block.type()
            t[name] = inner if nb.nesting == "SINGLE" else ["list", inner]
        return ["object", t]

    def force_new(self) -> list[str]:
        return [name for name, a in self.attrs.items() if a.force_new]


# -- building blocks ---------------------------------------------------------

def required(t, desc="", **kw) -> Attr:
    return Attr(t, required=True, description=desc, **kw)


def optional(t, desc="", **kw) -> Attr:
    return Attr(t, optional=True, description=desc, **kw)


def optional_computed(t, desc="", **kw) -> Attr:
    """Optional; when left out the provider fills in the API's default."""
    return Attr(t, optional=True, computed=True, description=desc, **kw)


def computed(t, desc="") -> Attr:
    return Attr(t, computed=True, description=desc)


STR, NUM, BOOL = "string", "number", "bool"
LABELS = ["map", STR]
REPLICA = ["object", {"node": STR, "rack": STR}]
INSTANCE = ["object", {"id": STR, "node": STR, "rack": STR, "state": STR, "address": STR, "mac": STR}]
GROUP_STATUS = ["object", {"phase": STR, "ready": NUM, "running": NUM, "pending": NUM,
                           "failed": NUM, "observed_generation": NUM, "message": STR}]
NODE = ["object", {"name": STR, "role": STR, "rack": STR, "leader": BOOL, "address": STR,
                   "healthy": BOOL, "capacity": ["map", NUM], "allocated": ["map", NUM]}]

TIMEOUTS = Nested(Block({
    "create": optional(STR, "how long create may take, e.g. \"10m\" (default 10m)"),
    "update": optional(STR, "how long an update may take (default 10m)"),
    "delete": optional(STR, "how long delete may take (default 10m)"),
}, description="How long each operation may wait, as Go durations (\"90s\", \"10m\", \"1h30m\"); "
               "the default is 10m each, or $COWFLEET_DEFAULT_TIMEOUT where the provider runs. "
               "Changing them changes nothing in the service."))

PROVIDER = Block({
    "endpoint": optional(STR, "the service's URL, http(s)://HOST:PORT; else $COWFLEET_ENDPOINT"),
    "token": optional(STR, "API bearer token; else $COWFLEET_TOKEN", sensitive=True),
}, description="cowfleet: fleets of ephemeral copy-on-write VMs. The provider holds no state of its own: "
               "every value is read back from the cowfleet REST API.")

IMAGE = Block({
    "id": computed(STR, "the image name"),
    "name": required(STR, "the image's name, unique in the service; a change replaces the image", force_new=True),
    "source_url": optional(STR, "file:// (on the storage node) or http(s):// URL the storage agents pull",
                           force_new=True),
    "path": optional(STR, "a local file to upload instead of source_url (PUT /v1/images/{name}/data); "
                          "set sha256 = filesha256(path) too, so that new content replaces the image"),
    "format": optional_computed(STR, "raw or qcow2 (default raw)", force_new=True),
    "min_replicas": optional_computed(NUM, f"storage copies to keep (default {D.MIN_REPLICAS})"),
    "labels": optional(LABELS, "key/value labels, for filtering lists"),
    "wait_for_available": optional_computed(BOOL, "wait until status is available (default true)"),
    "sha256": optional_computed(STR, "the SHA-256 of the data (computed); give it, e.g. filesha256(path), "
                                     "and the data is checked against it, and a change replaces the image",
                                force_new=True),
    "size_bytes": computed(NUM, "the image's size in bytes, once known"),
    "status": computed(STR, "pending, replicating, available, degraded or error"),
    "replicas": computed(["list", REPLICA], "the storage nodes holding a copy: node and rack"),
}, blocks={"timeouts": TIMEOUTS},
    description="A disk image the instances of groups boot from (copy-on-write: every instance gets its own "
                "overlay). Images are immutable: a new source, content or format is a new image. One in use "
                "by a group cannot be deleted, so replace it with create_before_destroy and a new name.")

FLAVOR = Block({
    "id": computed(STR, "the flavor name"),
    "name": required(STR, "the flavor's name; not small, medium or large (built in, always there); "
                          "a change replaces the flavor", force_new=True),
    "vcpus": required(NUM, "virtual CPUs of each instance"),
    "memory_mib": required(NUM, "memory of each instance, in MiB"),
    "disk_gib": optional_computed(NUM, "size of each instance's disk overlay, in GiB (default 1)"),
}, description="An instance size. Sizes change in place only while no group uses the flavor (the API "
               "answers 409 otherwise: make a new flavor and point the group at it).")

GROUP = Block({
    "id": computed(STR, "the group name"),
    "name": required(STR, "the group's name, unique in the service; a change replaces the group",
                     force_new=True),
    "image": required(STR, "image name; a change replaces instances rolling, within update_policy"),
    "flavor": required(STR, "flavor name (small, medium, large, or a cowfleet_flavor's name)"),
    "size": required(NUM, "number of instances; changes scale in place"),
    "user_data": optional(STR, "handed to every instance verbatim as its NoCloud seed's user-data "
                               "(#cloud-config, a #! script, ...); at most 65536 characters; "
                               "plans show it as (sensitive value): it often holds secrets",
                          sensitive=True),
    "ssh_authorized_keys": optional_computed(["list", STR], "OpenSSH public keys for the image's default user "
                                                   "(the seed's meta-data public-keys); at most 32"),
    "labels": optional(LABELS, "key/value labels, for filtering lists"),
    "persistent": optional_computed(BOOL, "keep instances' disks across restarts (default false: ephemeral)"),
    "ready_timeout": optional_computed(NUM, "seconds an instance has, from its start, to become ready; then "
                                            f"it is failed with reason ReadyTimeout (default {D.READY_TIMEOUT}, "
                                            f"{D.READY_TIMEOUT_MIN} to {D.READY_TIMEOUT_MAX})"),
    "start": optional_computed(STR, "how instances start: boot (a cold boot, the default), clone (restored "
                                    "from a warm-clone template the node makes on first use; a boot when "
                                    "that fails) or auto (a clone where a template exists or can be made); "
                                    "each instance's start says which it got"),
    "wait_for_ready": optional_computed(BOOL, "wait until status.ready == size (default true)"),
    "instances": computed(["list", INSTANCE], "every instance: id, node, rack, state, address (on its "
                                              "node's instance subnet, routed across racks) and mac"),
    "status": computed(GROUP_STATUS, "the group's status: phase, ready, running, pending, failed, "
                                     "observed_generation and message"),
}, blocks={
    "placement": Nested(Block({
        "strategy": optional_computed(STR, f"{' or '.join(D.STRATEGIES)} (default {D.STRATEGY})"),
        "max_per_node": optional(NUM, "at most this many of the group's instances on one node (default: no limit)"),
    }, description="Where instances go. Left out: the API's defaults (spread, no limit per node).")),
    "update_policy": Nested(Block({
        "max_unavailable": optional_computed(NUM, "instances that may be down at once during a "
                                                  f"rolling replacement (default {D.MAX_UNAVAILABLE})"),
        "max_surge": optional_computed(NUM, "instances beyond size that may run at once during a "
                                            f"rolling replacement (default {D.MAX_SURGE})"),
    }, description="How a new image or flavor rolls through the instances. Left out: the API's defaults.")),
    "timeouts": TIMEOUTS,
}, description="A group of identical instances of one image and flavor, kept at size by the service. "
               "Apply waits until status.ready == size (unless wait_for_ready = false), and fails "
               "at once when only a change of the group can make it ready (an instance failed, "
               "the image in error).")

IMAGE_DATA = Block({
    "id": computed(STR, "the image name"),
    "name": required(STR, "the name of an existing image"),
    "source_url": computed(STR, "where the storage agents pulled it from (null for an upload)"),
    "format": computed(STR, "raw or qcow2"),
    "min_replicas": computed(NUM, "storage copies kept"),
    "labels": computed(LABELS, "the image's labels"),
    "sha256": computed(STR, "the SHA-256 of the data, once known"),
    "size_bytes": computed(NUM, "the image's size in bytes, once known"),
    "status": computed(STR, "pending, replicating, available, degraded or error"),
    "replicas": computed(["list", REPLICA], "the storage nodes holding a copy: node and rack"),
}, description="An existing image, by name (an error if there is none).")

NODES_DATA = Block({
    "id": computed(STR, "nodes:ROLE:RACK, * for a filter not given"),
    "role": optional(STR, "only nodes of this role (compute or storage)"),
    "rack": optional(STR, "only nodes of this rack"),
    "nodes": computed(["list", NODE], "the nodes, by name: name, role, rack, leader, address, healthy, "
                                      "capacity and allocated"),
}, description="The cluster's nodes, optionally only those of one role or rack.")

RESOURCES = {"cowfleet_image": IMAGE, "cowfleet_flavor": FLAVOR, "cowfleet_instance_group": GROUP}
DATA_SOURCES = {"cowfleet_image": IMAGE_DATA, "cowfleet_nodes": NODES_DATA}


# -- protobuf ----------------------------------------------------------------

def _block_proto(pb, block: Block):
    out = pb.Schema.Block(description=block.description)
    for name, a in block.attrs.items():
        out.attributes.append(pb.Schema.Attribute(
            name=name, type=json.dumps(a.type, separators=(",", ":")).encode(),
            description=a.description, required=a.required, optional=a.optional,
            computed=a.computed, sensitive=a.sensitive))
    for name, nb in block.blocks.items():
        out.block_types.append(pb.Schema.NestedBlock(
            type_name=name, block=_block_proto(pb, nb.block),
            nesting=getattr(pb.Schema.NestedBlock, nb.nesting),
            min_items=nb.min_items, max_items=nb.max_items))
    return out


def to_proto(pb, block: Block):
    return pb.Schema(version=0, block=_block_proto(pb, block))


# -- JSON, as `terraform providers schema -json` shows it ----------------------------

SOURCE = "cowfleet.local/cowfleet/cowfleet"


def _block_json(block: Block) -> dict:
    out: dict = {}
    attrs = {}
    for name, a in block.attrs.items():
        j = {"type": a.type, "description": a.description, "description_kind": "plain"}
        j.update({k: True for k in ("required", "optional", "computed", "sensitive") if getattr(a, k)})
        if not a.description:
            del j["description"]
        attrs[name] = j
    if attrs:
        out["attributes"] = attrs
    if block.blocks:
        out["block_types"] = {}
        for name, nb in block.blocks.items():
            j = {"nesting_mode": nb.nesting.lower(), "block": _block_json(nb.block)}
            j.update({k: getattr(nb, k) for k in ("min_items", "max_items") if getattr(nb, k)})
            out["block_types"][name] = j
    if block.description:
        out["description"] = block.description
    out["description_kind"] = "plain"
    return out


def schema_json() -> dict:
    """The provider's schemas in the form `terraform providers schema -json` prints
    them (format 0.2, Terraform 1.0): what the registry-style docs are made from
    (``gen_docs.py``); tests/terraform checks Terraform shows exactly this."""
    def one(block: Block) -> dict:
        return {"version": 0, "block": _block_json(block)}
    return {"format_version": "0.2", "provider_schemas": {SOURCE: {
        "provider": one(PROVIDER),
        "resource_schemas": {name: one(b) for name, b in RESOURCES.items()},
        "data_source_schemas": {name: one(b) for name, b in DATA_SOURCES.items()},
    }}}
