"""What each resource and data source does: plan, apply, read, import.

Plain dicts in, plain dicts out (``values.UNKNOWN`` for values known only
after apply); ``server.py`` does the gRPC and msgpack around them, so this is
unit-testable without Terraform. The shim keeps no state: everything it
returns is read back from the REST API (``cowfleet.client``).

The HTTP client (and requests, ~120 ms to import here) is imported inside
the functions that call the API: Terraform starts the provider 3-5 times a
command, and a launch that only validates or plans never needs it (main.py).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from cowfleet.models import DEFAULT_FLAVORS, Reason
from cowfleet import defaults as spec_defaults
from cowfleet.checksum import is_sha256
from cowfleet.protocol import ProblemType
from cowfleet.provider import schema as S
from cowfleet.provider.diagnostics import Diag, ProviderError, from_api_error, from_validation
from cowfleet.provider.values import UNKNOWN, has_unknown

DEFAULT_TIMEOUT = 600.0
BUILT_IN_FLAVORS = frozenset(f.name for f in DEFAULT_FLAVORS)
POLL = 1.0
# set by the Stop RPC or SIGINT (Terraform was interrupted): every wait ends at
# once (Event.wait returns when it is set), an upload at its next 1 MiB read
STOP = threading.Event()
PROGRESS_EVERY = 10.0            # seconds between "still waiting" log lines (TF_LOG=DEBUG)
log = logging.getLogger("cowfleet.provider")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNITS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Go-style durations as Terraform users write them: "90s", "10m", "1h30m"."""
    pos, total = 0, 0.0
    text = text.strip()
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"'{text}' is not a duration such as \"30s\", \"10m\" or \"1h30m\"")
    return total


def default_timeout() -> float:
    """DEFAULT_TIMEOUT, or COWFLEET_DEFAULT_TIMEOUT (a duration, e.g. "4m")
    where the provider runs: a test harness bounds every wait below its own."""
    text = os.environ.get("COWFLEET_DEFAULT_TIMEOUT", "")
    try:
        return parse_duration(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def timeout_of(state: dict | None, op: str) -> float:
    t = (state or {}).get("timeouts") or {}
    value = t.get(op)
    return parse_duration(value) if isinstance(value, str) else default_timeout()


@dataclass
class Deadline:
    """One operation's clock: ``timeouts`` caps the whole create, update or
    delete (the PUT, an upload, the wait for a deletion to end, the wait for
    readiness), not each step, as SDKv2's ``schema.TimeoutCreate`` does."""
    seconds: float
    at: float
    started: float

    @classmethod
    def start(cls, seconds: float) -> "Deadline":
        now = time.monotonic()
        return cls(seconds, now + seconds, now)

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _deadline(deadline: "Deadline | None", state: dict | None, op: str) -> Deadline:
    return deadline if deadline is not None else Deadline.start(timeout_of(state, op))


def _api(call, block, what: str, state=None):
    """Run an API call; ApiError becomes diagnostics on the attributes at fault."""
    from cowfleet.client import ApiError
    import requests
    try:
        return call()
    except ApiError as exc:
        raise ProviderError(from_api_error(exc, block, what), state)
    except requests.RequestException as exc:
        raise ProviderError([Diag(f"{what}: the cowfleet service did not answer", str(exc))], state)


def pause(state: dict | None, what: str, deadline: Deadline | None = None, status: str = "") -> None:
    """Wait one poll interval (less if the deadline comes sooner), unless
    Terraform asked us to stop; says how long it has waited every
    PROGRESS_EVERY seconds, and at the first pause (visible with TF_LOG=DEBUG)."""
    if deadline is not None and (deadline.elapsed() < POLL or int(deadline.elapsed() / PROGRESS_EVERY) !=
                                 int((deadline.elapsed() + POLL) / PROGRESS_EVERY)):
        log.info("waiting for %s: %.0fs of %.0fs%s", what, deadline.elapsed(), deadline.seconds,
                 f"; {status}" if status else "")
    wait = POLL if deadline is None else max(0.0, min(POLL, deadline.left()))
    if STOP.wait(wait):
        raise ProviderError([Diag(f"interrupted while waiting for {what}",
                                  "Terraform was interrupted (Ctrl-C); what was made so far is in the state")],
                            state)


def _fill_defaults(value: dict | None, block: S.Block, defaults: dict) -> dict | None:
    """Optional+computed attributes left null get the API's default (blocks too)."""
    if value is None or value is UNKNOWN:
        return value
    out = dict(value)
    for name, default in defaults.items():
        if isinstance(default, dict):
            out[name] = _fill_defaults(out.get(name), block.blocks[name].block, default)
        elif out.get(name) is None:
            out[name] = default
    return out


def _unset_defaults(proposed: dict, config: dict, defaults: dict) -> dict:
    """Attributes with a documented default that the configuration leaves out
    planned null (``_fill_defaults`` then plans the default). Terraform
    proposes the prior value for an optional+computed attribute the
    configuration leaves null, so without this, removing ``persistent = true``
    would plan no change and the group would stay persistent."""
    out = dict(proposed)
    for name, default in defaults.items():
        given = config.get(name)
        if isinstance(default, dict):               # a block: its settings, if it is there
            if isinstance(given, dict) and isinstance(out.get(name), dict):
                out[name] = _unset_defaults(out[name], given, default)
        elif given is None:
            out[name] = None
    return out


_SKIP = object()


def known_values(value: Any) -> Any:
    """What the API's schema can judge at plan: ``value`` without what is
    unknown (computed at apply) or null (the API's default applies). An
    unknown object attribute or map element is left out; a list with an
    unknown element is left out whole (its length and order are not known)."""
    if value is UNKNOWN:
        return _SKIP
    if isinstance(value, dict):
        out = {k: known_values(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v is not _SKIP}
    if isinstance(value, list):
        out = [known_values(v) for v in value]
        return _SKIP if _SKIP in out else out
    return value


def spec_diagnostics(config: dict, schema_name: str, block: S.Block) -> list[Diag]:
    """The service's own input schema (``cowfleet.specs``) on the known values
    of a configuration: every value the API would refuse is a diagnostic on
    its attribute at plan, before any call. Partial: what is missing or
    unknown is not judged here (Terraform checks required attributes, the
    API what is known only at apply). Existence (is there such a flavor) is
    left to apply: a flavor made in the same plan is not there yet.

    marshmallow is imported here, not at the top: a launch that only answers
    GetProviderSchema never needs it (main.py)."""
    from marshmallow import ValidationError

    from cowfleet import specs
    schema = getattr(specs, schema_name)()
    data = known_values({k: v for k, v in config.items() if k in schema.fields})
    diags = from_validation(schema.validate(data, partial=True), block)
    name = config.get("name")
    if isinstance(name, str):
        try:
            specs.Name().deserialize(name)
        except ValidationError as exc:
            diags += from_validation({"name": exc.messages}, block)
    return diags


def merge_known(planned: Any, actual: Any) -> Any:
    """The new state after apply: what was planned, with unknowns taken from the API."""
    if planned is UNKNOWN:
        return actual
    if isinstance(planned, dict) and isinstance(actual, dict):
        return {k: merge_known(v, actual.get(k)) for k, v in planned.items()}
    return planned


class Resource:
    block: S.Block
    kind = "object"
    type_name = "cowfleet_object"
    defaults: dict = {}
    volatile: tuple[str, ...] = ()        # computed attributes an update may change
    # computed attribute -> the attributes whose change may change it (absent: any API change)
    volatile_when: dict[str, tuple[str, ...]] = {}
    # what only Terraform uses (how long, whether to wait, where bytes came from):
    # a change of these alone calls nothing and keeps every computed value
    cosmetic: tuple[str, ...] = ("timeouts",)
    empty_when_unset: dict = {}           # name -> empty(): unset in the configuration means empty
    spec_schema = ""                      # the API's input schema in cowfleet.specs

    # -- plan ---------------------------------------------------------------
    def plan(self, prior: dict | None, proposed: dict | None,
             config: dict | None = None) -> tuple[dict | None, list[list[str]]]:
        if proposed is None:                       # destroy
            return None, []
        if config is not None:
            # Terraform proposes a block the configuration no longer has from the
            # prior state (its attributes are optional+computed); the plan must
            # follow the configuration: no block, the API's defaults
            proposed = dict(proposed, **{name: None for name in self.block.blocks
                                         if config.get(name) is None})
            # collections where unset means empty (optional+computed, so the
            # plan may say so): null and [] never differ, and removing the
            # attribute from the configuration empties it
            proposed.update({name: empty() for name, empty in self.empty_when_unset.items()
                             if config.get(name) is None})
            # and an attribute left out has its default, whatever the prior state says
            proposed = _unset_defaults(proposed, config, self.defaults)
        planned = _fill_defaults(proposed, self.block, self.defaults)
        if prior is None:                          # create
            for name, attr in self.block.attrs.items():
                if attr.computed and (not attr.optional or planned.get(name) is None):
                    planned[name] = UNKNOWN        # known once the API answers
            planned["id"] = planned["name"]
            return planned, []
        if planned == prior:
            return planned, []
        replace = [[name] for name in self.block.force_new()
                   if planned.get(name) != prior.get(name) or planned.get(name) is UNKNOWN]
        changed = {name for name in planned if planned.get(name) != prior.get(name)}
        if changed == {"timeouts"}:
            # SDKv2's rule: timeouts alone never make a diff. Planned as the
            # prior state (no change), so a configuration with a timeouts block
            # plans no change after an import (which cannot know the block);
            # the state takes the configured timeouts with the next real change.
            # Terraform checks that a plan matches the configuration, so the
            # server flags this plan as SDKv2's are (keeps_prior_timeouts).
            return prior, []
        if changed - set(self.cosmetic) or replace:
            for name in self.volatile:
                when = self.volatile_when.get(name)
                if replace or when is None or changed & set(when):
                    planned[name] = UNKNOWN
        if replace:
            for name, attr in self.block.attrs.items():
                if attr.computed and not attr.optional:
                    planned[name] = UNKNOWN
            planned["id"] = planned["name"]
        return planned, replace

    def keeps_prior_timeouts(self, planned: dict | None, config: dict | None) -> bool:
        """A plan whose timeouts are the state's, not the configuration's (see ``plan``)."""
        return (planned is not None and config is not None and "timeouts" in self.block.blocks
                and planned.get("timeouts") != config.get("timeouts"))

    def only_cosmetic(self, prior: dict, planned: dict) -> bool:
        """An update that changes only what Terraform alone uses (``cosmetic``)."""
        return not has_unknown(planned) and all(
            planned.get(name) == prior.get(name) for name in planned if name not in self.cosmetic)

    def validate(self, config: dict) -> list[Diag]:
        diags = spec_diagnostics(config, self.spec_schema, self.block)
        for op, value in ((config.get("timeouts") or {}).items()):
            if isinstance(value, str):
                try:
                    parse_duration(value)
                except ValueError as exc:
                    diags.append(Diag("Invalid timeout", str(exc), ["timeouts", op]))
        return diags

    # -- the REST side, per resource ---------------------------------------
    def fetch(self, client, name: str) -> dict | None: ...
    def to_state(self, obj: dict, prior: dict | None) -> dict: ...
    def write(self, client, state: dict, prior: dict | None, deadline: Deadline | None = None) -> None: ...
    def remove(self, client, name: str) -> None: ...

    def wait(self, client, state: dict, op: str, deadline: Deadline | None = None) -> dict:
        return self.fetch(client, state["name"])

    def put(self, client, put, state: dict, prior: dict | None, **spec) -> None:
        """``put(name, create_only=..., **spec)``; a create sends ``If-None-Match: *``,
        so an object of that name made elsewhere (another workspace, by hand,
        a built-in flavor) is refused, never resized, relabelled or later deleted."""
        from cowfleet.client import ApiError
        try:
            put(state["name"], create_only=prior is None, **spec)
        except ApiError as exc:
            if prior is None and exc.status == 412:
                if exc.resent and self.made_by_lost_attempt(exc, self.fetch(client, state["name"]), spec):
                    return
                raise ProviderError([self.already_exists(state["name"])]) from None
            raise

    def made_by_lost_attempt(self, exc, obj: dict | None, spec: dict) -> bool:
        """A create-only PUT answered 412 on a resend: was the object made by
        its own first attempt, whose answer was lost? Then it is ours to
        adopt (else it would stay outside the state, and the next apply would
        refuse it as made elsewhere). Ours when it holds exactly the spec
        sent and was not changed since (``unchanged``); an object made
        elsewhere with another spec, or met without a lost answer, is not."""
        return bool(exc.resent and obj is not None and self.unchanged(obj) and _holds(obj, spec))

    def unchanged(self, obj: dict) -> bool:
        return True

    def already_exists(self, name: str) -> Diag:
        return Diag(f"{self.kind} '{name}' already exists",
                    f"cowfleet already has a {self.kind} named '{name}' that this Terraform state "
                    f"does not manage, and a create never takes one over. To manage it with this "
                    f"configuration, import it:\n  terraform import {self.type_name}.<NAME> {name}\n"
                    f"(<NAME> as in the resource block), or choose another name.", ["name"])

    def read(self, client, state: dict) -> dict | None:
        obj = _api(lambda: self.fetch(client, state["name"]), self.block, f"reading {self.kind}")
        return None if obj is None else self.to_state(obj, state)

    def import_state(self, name: str) -> dict:
        return {"id": name, "name": name}

    def apply(self, client, prior: dict | None, planned: dict | None) -> dict | None:
        if planned is None:
            name = prior["name"]
            deadline = Deadline.start(timeout_of(prior, "delete"))
            _api(lambda: self.remove(client, name), self.block, f"deleting {self.kind} '{name}'", prior)
            self._wait_gone(client, name, deadline, prior)
            return None
        if prior is not None and self.only_cosmetic(prior, planned):
            return planned                     # nothing for the service: no PUT, no wait
        op = "create" if prior is None else "update"
        deadline = Deadline.start(timeout_of(planned, op))        # the whole operation's
        what = f"{'creating' if op == 'create' else 'updating'} {self.kind} '{planned['name']}'"
        _api(lambda: self.write(client, planned, prior, deadline), self.block, what, prior)
        obj = self.wait(client, planned, op, deadline)
        if obj is None:
            raise ProviderError([Diag(f"{what}: it vanished right after it was written")])
        return merge_known(planned, self.to_state(obj, planned))

    def _wait_gone(self, client, name: str, deadline: Deadline, prior: dict) -> None:
        while True:
            obj = _api(lambda: self.fetch(client, name), self.block, f"deleting {self.kind} '{name}'", prior)
            if obj is None:
                return
            if deadline.passed():
                raise ProviderError([Diag(f"{self.kind} '{name}' still exists after {deadline.seconds:.0f}s",
                                          _describe(obj))], prior)
            pause(prior, f"{self.kind} '{name}' to go", deadline, _describe(obj))


def _holds(obj: dict, spec: dict) -> bool:
    """``obj`` has the values ``spec`` sent; in a nested object (placement) a
    field not sent must be null (the API's default), so labels or settings
    of someone else's never match."""
    for key, sent in spec.items():
        got = obj.get(key)
        if isinstance(sent, dict) and key != "labels" and isinstance(got, dict):
            if any(got.get(k) != v for k, v in sent.items()) or any(
                    v is not None for k, v in got.items() if k not in sent):
                return False
        elif got != sent:
            return False
    return True


def _describe(obj: dict) -> str:
    st = obj.get("status")
    if isinstance(st, dict):
        # a group's Ready condition gathers why it is not ready (reason: message)
        ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready and ready.get("status") == "False":
            return f"phase {st.get('phase')}: {ready.get('reason')}: {ready.get('message')}"
        return f"phase {st.get('phase')}: {st.get('message')}"
    return f"status {st}: {obj.get('message', '')}"


def _labels(api_labels: dict | None, prior: dict | None):
    """Keep a null in state where the configuration has no labels and the API has none."""
    if not api_labels and (prior or {}).get("labels") is None:
        return None
    return api_labels or {}


def _keep(prior: dict | None, name: str, default):
    value = (prior or {}).get(name)
    return default if value is None or value is UNKNOWN else value


class Image(Resource):
    block = S.IMAGE
    kind = "image"
    type_name = "cowfleet_image"
    defaults = {"format": "raw", "min_replicas": spec_defaults.MIN_REPLICAS, "wait_for_available": True}
    volatile = ("status", "replicas")
    cosmetic = ("timeouts", "wait_for_available", "path")
    spec_schema = "ImageSpecSchema"

    def validate(self, config: dict) -> list[Diag]:
        diags = super().validate(config)
        if config.get("source_url") and config.get("path"):
            diags.append(Diag("Conflicting image sources", "give source_url or path, not both", ["path"]))
        sha = config.get("sha256")
        if isinstance(sha, str) and not is_sha256(sha):
            diags.append(Diag("Invalid sha256", "64 hexadecimal digits, e.g. filesha256(path)", ["sha256"]))
        return diags

    def fetch(self, client, name):
        return client.get_image(name)

    def to_state(self, obj, prior):
        sha = obj.get("sha256")
        given = (prior or {}).get("sha256")
        if isinstance(given, str) and (sha is None or given.lower() == sha):
            # as the configuration spells it (upper case or lower); and while the
            # API knows no checksum yet (a source still being fetched), the
            # configured one stands, so that no plan replaces the image for it
            sha = given
        return {
            "id": obj["name"], "name": obj["name"], "source_url": obj.get("source_url"),
            "path": (prior or {}).get("path"), "format": obj.get("format"),
            "min_replicas": obj.get("min_replicas"), "labels": _labels(obj.get("labels"), prior),
            "wait_for_available": _keep(prior, "wait_for_available", True),
            "sha256": sha, "size_bytes": obj.get("size_bytes"), "status": obj.get("status"),
            "replicas": [{"node": r.get("node"), "rack": r.get("rack")} for r in obj.get("replicas") or []],
            "timeouts": (prior or {}).get("timeouts"),
        }

    def write(self, client, state, prior, deadline=None):
        deadline = _deadline(deadline, state, "create" if prior is None else "update")
        path = state.get("path") if prior is None else None
        if path and not os.path.isfile(path):
            raise ProviderError([Diag("Image file not found", f"no file at '{path}' to upload", ["path"])])
        self.put(client, client.put_image, state, prior, source_url=state.get("source_url"), format=state["format"],
                 min_replicas=state["min_replicas"], labels=state.get("labels") or {})
        if path:
            # Streamed upload, PUT /v1/images/{name}/data (the REST contract);
            # the service checks the bytes against X-Checksum-Sha256. If it
            # fails, the image this create made (If-None-Match: *, so it is
            # ours) goes again: nothing is left untracked.
            sha = state.get("sha256")
            try:
                client.upload_image(state["name"], path, sha256=sha if isinstance(sha, str) else None,
                                    progress=self._upload_progress(state["name"], deadline))
            except BaseException:
                try:
                    client.delete_image(state["name"])
                except Exception:
                    pass
                raise

    @staticmethod
    def _upload_progress(name: str, deadline: Deadline):
        """Called at each 1 MiB the upload reads: an interrupt or the end of
        the operation's time stops it there (the image it made goes again)."""
        said = [0.0]

        def progress(sent: int, size: int) -> None:
            if STOP.is_set():
                raise ProviderError([Diag(f"interrupted while uploading image '{name}'",
                                          f"{sent} of {size} bytes sent; the image is removed again")])
            if deadline.passed():
                raise ProviderError([Diag(f"image '{name}' not uploaded after {deadline.seconds:.0f}s",
                                          f"{sent} of {size} bytes sent in the create timeout; "
                                          "the image is removed again")], None)
            if deadline.elapsed() - said[0] >= PROGRESS_EVERY:
                said[0] = deadline.elapsed()
                log.info("uploading image '%s': %d of %d bytes after %.0fs", name, sent, size, said[0])
        return progress

    def remove(self, client, name):
        client.delete_image(name)

    def wait(self, client, state, op, deadline=None):
        obj = self._wait_available(client, state, _deadline(deadline, state, op))
        want, got = state.get("sha256"), (obj or {}).get("sha256")
        if isinstance(want, str) and got and got != want.lower():
            # e.g. a source_url whose data is not what the configuration says
            raise ProviderError([Diag("Image data does not match sha256",
                                      f"the data's SHA-256 is {got}, not {want}", ["sha256"])],
                                dict(merge_known(state, self.to_state(obj, state)), sha256=got))
        return obj

    def _wait_available(self, client, state, deadline: Deadline):
        obj = _api(lambda: client.get_image(state["name"]), self.block, "reading image")
        if not state.get("wait_for_available"):
            return obj
        while obj is not None and obj.get("status") != "available":
            if obj.get("status") == "error" or deadline.passed():
                why = "failed" if obj.get("status") == "error" else f"not available after {deadline.seconds:.0f}s"
                raise ProviderError([Diag(f"image '{state['name']}' {why}", _describe(obj))],
                                    merge_known(state, self.to_state(obj, state)))
            pause(merge_known(state, self.to_state(obj, state)), f"image '{state['name']}'", deadline,
                  _describe(obj))
            obj = _api(lambda: client.get_image(state["name"]), self.block, "reading image")
        return obj


class Flavor(Resource):
    block = S.FLAVOR
    kind = "flavor"
    type_name = "cowfleet_flavor"
    defaults = {"disk_gib": 1}
    spec_schema = "FlavorSpecSchema"

    def validate(self, config: dict) -> list[Diag]:
        diags = super().validate(config)
        if config.get("name") in BUILT_IN_FLAVORS:
            diags.append(Diag(f"flavor '{config['name']}' is built in",
                              f"{', '.join(sorted(BUILT_IN_FLAVORS))} always exist and cannot be changed: "
                              f"use it by name (flavor = \"{config['name']}\") without a cowfleet_flavor "
                              "resource, or give this flavor a name of its own", ["name"]))
        return diags

    def fetch(self, client, name):
        return client.get_flavor(name)

    def to_state(self, obj, prior):
        return {"id": obj["name"], "name": obj["name"], "vcpus": obj.get("vcpus"),
                "memory_mib": obj.get("memory_mib"), "disk_gib": obj.get("disk_gib")}

    def write(self, client, state, prior, deadline=None):
        self.put(client, client.put_flavor, state, prior, vcpus=state["vcpus"], memory_mib=state["memory_mib"],
                 disk_gib=state["disk_gib"])

    def remove(self, client, name):
        client.delete_flavor(name)


PLACEMENT_DEFAULT = spec_defaults.placement()
UPDATE_POLICY_DEFAULT = spec_defaults.update_policy()


class InstanceGroup(Resource):
    block = S.GROUP
    kind = "instance group"
    type_name = "cowfleet_instance_group"
    defaults = {"wait_for_ready": True, "persistent": False, "ready_timeout": spec_defaults.READY_TIMEOUT,
                "start": spec_defaults.START,
                "placement": PLACEMENT_DEFAULT,
                "update_policy": UPDATE_POLICY_DEFAULT}
    volatile = ("instances", "status")
    # the instances (ids, nodes, addresses) change only when these do; labels,
    # user_data, keys or the update policy leave them as they are
    volatile_when = {"instances": ("size", "image", "flavor", "placement", "persistent")}
    cosmetic = ("timeouts", "wait_for_ready")
    empty_when_unset = {"ssh_authorized_keys": list}
    spec_schema = "GroupSpecSchema"

    def fetch(self, client, name):
        return client.get_group(name)

    def spec(self, state: dict) -> dict:
        spec = {"image": state["image"], "flavor": state["flavor"], "size": state["size"],
                "labels": state.get("labels") or {}}
        if state.get("user_data") is not None:
            spec["user_data"] = state["user_data"]
        spec["ssh_authorized_keys"] = list(state.get("ssh_authorized_keys") or [])
        if state.get("persistent") is not None:
            spec["persistent"] = state["persistent"]
        if state.get("ready_timeout") is not None:
            spec["ready_timeout"] = int(state["ready_timeout"])
        if state.get("start") is not None:
            spec["start"] = state["start"]
        if state.get("placement") is not None:
            spec["placement"] = {k: v for k, v in state["placement"].items() if v is not None}
        if state.get("update_policy") is not None:
            spec["update_policy"] = {k: v for k, v in state["update_policy"].items() if v is not None}
        return spec

    def to_state(self, obj, prior):
        prior = prior or {}

        def block(name, default):
            got = dict(default, **(obj.get(name) or {}))
            return None if prior.get(name) is None and got == default else got

        st = obj.get("status") or {}
        return {
            "id": obj["name"], "name": obj["name"], "image": obj.get("image"), "flavor": obj.get("flavor"),
            "size": obj.get("size"), "user_data": obj.get("user_data"),
            "persistent": bool(obj.get("persistent", False)),
            "ready_timeout": obj.get("ready_timeout", spec_defaults.READY_TIMEOUT),
            "start": obj.get("start", spec_defaults.START),
            "labels": _labels(obj.get("labels"), prior),
            "ssh_authorized_keys": list(obj.get("ssh_authorized_keys") or []),
            "wait_for_ready": _keep(prior, "wait_for_ready", True),
            "placement": block("placement", PLACEMENT_DEFAULT),
            "update_policy": block("update_policy", UPDATE_POLICY_DEFAULT),
            "timeouts": prior.get("timeouts"),
            "instances": [{k: i.get(k) for k in S.INSTANCE[1]}
                          for i in obj.get("instances") or []],
            "status": {k: st.get(k) for k in S.GROUP_STATUS[1]},
        }

    def read(self, client, state):
        # a group being deleted (behind Terraform's back) is as good as gone:
        # the plan re-creates it, and create waits for the deletion to finish
        new = super().read(client, state)
        return None if new is not None and (new.get("status") or {}).get("phase") == "deleting" else new

    def write(self, client, state, prior, deadline=None):
        from cowfleet.client import ApiError
        name = state["name"]
        deadline = _deadline(deadline, state, "create" if prior is None else "update")
        while True:
            try:
                client.put_group(name, create_only=prior is None, **self.spec(state))
                return
            except ApiError as exc:
                deleting = exc.type == ProblemType.GROUP_BEING_DELETED
                if exc.status == 412 and prior is None:
                    # there is one of that name: ours if our own first attempt
                    # made it (its answer lost); ours to create once a deletion
                    # ends (drift: deleted behind Terraform's back), else not ours
                    got = client.get_group(name)
                    if exc.resent and self.made_by_lost_attempt(exc, got, self.spec(state)):
                        return
                    deleting = got is None or (got.get("status") or {}).get("phase") == "deleting"
                    if not deleting:
                        raise ProviderError([self.already_exists(name)]) from None
                if not deleting or deadline.passed():
                    raise
            pause(None, f"instance group '{name}' to finish its deletion", deadline)

    def remove(self, client, name):
        client.delete_group(name)

    def unchanged(self, obj):
        # a group's spec changes bump its generation; one PUT made it: 1
        return obj.get("generation") == 1 and (obj.get("status") or {}).get("phase") != "deleting"

    def wait(self, client, state, op, deadline=None):
        name = state["name"]
        obj = _api(lambda: client.get_group(name), self.block, "reading instance group")
        if not state.get("wait_for_ready"):
            return obj
        deadline = _deadline(deadline, state, op)
        while obj is not None and not is_ready(obj):
            stuck = stalled_for_good(obj)
            if stuck:
                raise ProviderError(
                    [Diag(f"instance group '{name}' cannot become ready: {stuck}",
                          "Nothing but a change of the group ends this: fix the image or the guest's boot, "
                          "then apply again (the group is kept, tainted, and replaced).")],
                    merge_known(state, self.to_state(obj, state)))
            if deadline.passed():
                raise ProviderError(
                    [Diag(f"instance group '{name}' not ready after {deadline.seconds:.0f}s", _describe(obj))],
                    merge_known(state, self.to_state(obj, state)))
            pause(merge_known(state, self.to_state(obj, state)), f"instance group '{name}'", deadline,
                  _describe(obj))
            obj = _api(lambda: client.get_group(name), self.block, "reading instance group")
        return obj


# Why a group is not ready that only a change of its spec ends: a failed
# instance stays failed (a rolling update or a scale-in removes it first) and
# an image in error stays so. Waiting on them ended only at the create
# timeout (10 min by default), long after the group had said so (a guest
# that never boots is failed at its ready_timeout). Not NoCapacity: a node
# joining ends that, so a group waiting for room keeps waiting.
STALLED_FOR_GOOD = (Reason.INSTANCES_FAILED, Reason.IMAGE_ERROR)


def stalled_for_good(group: dict) -> str:
    """The Ready condition's reason and message when the group's Progressing
    condition says it is stalled for one of STALLED_FOR_GOOD; else ''."""
    conds = {c.get("type"): c for c in (group.get("status") or {}).get("conditions") or []}
    progressing, ready = conds.get("Progressing") or {}, conds.get("Ready") or {}
    if (progressing.get("status") == "False" and progressing.get("reason") == Reason.STALLED
            and ready.get("reason") in STALLED_FOR_GOOD):
        return f"{ready['reason']}: {ready.get('message', '')}"
    return ""


def is_ready(group: dict) -> bool:
    """ready == size for the current generation, and nothing still terminating
    (so the instances Terraform records are the ones that stay)."""
    st = group.get("status") or {}
    return (st.get("ready") == group.get("size")
            and len(group.get("instances") or []) == group.get("size")
            and (st.get("observed_generation") or 0) >= (group.get("generation") or 0)
            and st.get("phase") == "ready")


# -- data sources --------------------------------------------------------------

def read_image_data(client, config: dict) -> dict:
    name = config["name"]
    obj = _api(lambda: client.get_image(name), S.IMAGE_DATA, f"reading image '{name}'")
    if obj is None:
        raise ProviderError([Diag(f"image '{name}' does not exist", "", ["name"])])
    state = Image().to_state(obj, {"labels": {}})
    return {k: state.get(k) for k in S.IMAGE_DATA.attrs}


def read_nodes_data(client, config: dict) -> dict:
    nodes = _api(client.nodes, S.NODES_DATA, "listing nodes")
    out = []
    for n in sorted(nodes, key=lambda n: n.get("name", "")):
        if config.get("role") and n.get("role") != config["role"]:
            continue
        if config.get("rack") and n.get("rack") != config["rack"]:
            continue
        out.append({k: n.get(k) for k in S.NODE[1]})
    return {"id": f"nodes:{config.get('role') or '*'}:{config.get('rack') or '*'}",
            "role": config.get("role"), "rack": config.get("rack"), "nodes": out}


RESOURCES = {"cowfleet_image": Image(), "cowfleet_flavor": Flavor(),
             "cowfleet_instance_group": InstanceGroup()}
DATA_SOURCES = {"cowfleet_image": read_image_data, "cowfleet_nodes": read_nodes_data}
__all__ = ["RESOURCES", "DATA_SOURCES", "has_unknown", "parse_duration"]
