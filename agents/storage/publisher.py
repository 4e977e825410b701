"""What a storage node says in ZooKeeper, and what it reads there.

- the image record's ``sha256``/``size_bytes`` once a copy is made (and
  ``error`` while copies fail and the image is short);
- one EPHEMERAL replica record per exported copy,
  ``/cowfleet/images/<name>/replicas/<node>``, with the portal and target
  (gone with the agent's session, so an image's status is always the truth);
  withdrawn while the exporter does not answer.
"""
from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from cowfleet.models import Image, NodeInfo, Replica
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children, update
from cowfleet.zk.members import serving


class Publisher:
    def __init__(self, zk: KazooClient, node: str, rack: str, portal: str):
        self.zk, self.node, self.rack, self.portal = zk, node, rack, portal

    # -- reads --------------------------------------------------------------
    def image_names(self) -> set[str]:
        return set(self.zk.get_children(layout.IMAGES))

    def watch_images(self, changed) -> None:
        """``changed(names)`` whenever an image is created or deleted."""
        self.zk.ChildrenWatch(layout.IMAGES, changed)

    def image(self, name: str) -> Image | None:
        got = read(self.zk, layout.image(name), Image)
        return got[0] if got else None

    def image_exists(self, name: str) -> bool:
        return bool(self.zk.exists(layout.image(name)))

    def replicas(self, name: str) -> list[Replica]:
        return [r for r, _ in read_children(self.zk, layout.image_replicas(name), Replica)]

    def publishes(self, name: str) -> bool:
        """Whether this node's replica record of ``name`` exists."""
        return bool(self.zk.exists(layout.image_replica(name, self.node)))

    def storage_members(self, healthy: bool = False) -> list[NodeInfo]:
        """The storage members; with ``healthy``, those serving (``members.serving``)."""
        return [n for n, _ in read_children(self.zk, layout.NODES, NodeInfo)
                if (serving(n, "storage") if healthy else n.role == "storage")]

    def member(self, name: str) -> NodeInfo | None:
        got = read(self.zk, layout.node(name), NodeInfo)
        return got[0] if got else None

    # -- writes -------------------------------------------------------------
    def record_copy(self, image: Image, sha: str, size: int) -> Image | None:
        """Put a copy's checksum and size on its image record (if the record
        is still the one the copy was made for and names no other bytes);
        returns the record as it is now, None if it is gone or replaced."""
        def record(img: Image):
            if img.created_at != image.created_at:
                return None        # an image of the same name made since: not this copy's
            if img.sha256 and img.sha256 != sha:
                return None
            if img.sha256 == sha and img.size_bytes == size and img.error is None:
                return None
            img.sha256, img.size_bytes, img.error = sha, size, None
            return img
        update(self.zk, layout.image(image.name), Image, record)
        now = self.image(image.name)
        return now if now is not None and now.created_at == image.created_at else None

    def publish(self, name: str, path: str, sha: str, size: int, target: str) -> bool:
        """This node's replica record of ``name``; False if it was there already
        (or the image is gone)."""
        replica = Replica(node=self.node, rack=self.rack, path=path, sha256=sha, size_bytes=size,
                          portal=self.portal, target=target)
        try:
            self.zk.create(layout.image_replica(name, self.node), replica.to_bytes(), ephemeral=True)
            return True
        except (NodeExistsError, NoNodeError):
            return False

    def withdraw(self, name: str, missing_ok: bool = True) -> None:
        try:
            self.zk.delete(layout.image_replica(name, self.node))
        except NoNodeError:
            if not missing_ok:
                raise

    def record_error(self, image: Image, message: str) -> None:
        """Say why copies of the image fail -- unless it has its replicas
        (another node made the copy meanwhile: nothing is wrong)."""
        def change(img: Image):
            if img.created_at != image.created_at or img.error == message:
                return None         # an image of the same name made since, or said already
            try:
                if len(self.zk.get_children(layout.image_replicas(image.name))) >= img.min_replicas:
                    return None
            except NoNodeError:
                return None
            img.error = message
            return img
        update(self.zk, layout.image(image.name), Image, change)
