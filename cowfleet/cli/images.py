"""``cowfleet image``: create, upload, list, get, delete; build the demo and
Debian guest images locally."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cowfleet.cli.common import (client, delete_and_wait, done, key_values, labels_arg, name_argument, note,
                                 output_option, Progress, read_commands, table, wait_options, wait_until)
from cowfleet.defaults import MIN_REPLICAS as DEFAULT_MIN_REPLICAS


def existing_names(cl) -> list[dict]:
    """What the shell completes NAME from."""
    return cl.list_images()


def images_table(images: list[dict], wide: bool) -> str:
    headers = ["NAME", "FORMAT", "SIZE", "STATUS", "REPLICAS"]
    if wide:
        headers += ["MIN", "SHA256", "SOURCE", "LABELS", "CREATED", "MESSAGE"]
    rows = []
    for i in images:
        size = f"{i['size_bytes'] / (1 << 20):.1f} MiB" if i.get("size_bytes") is not None else None
        row = [i["name"], i["format"], size, i["status"], [r["node"] for r in i.get("replicas", [])]]
        if wide:
            row += [i["min_replicas"], (i.get("sha256") or "")[:16], i.get("source_url"), i.get("labels"),
                    i.get("created_at"), i.get("message")]
        rows.append(row)
    return table(headers, rows, right=("SIZE", "MIN"))


def image_table(i: dict, wide: bool) -> str:
    return key_values((k, [f"{r['node']} ({r['rack']})" for r in v] if k == "replicas" else v)
                      for k, v in i.items())


def min_replicas_default(cl) -> tuple[int, str | None]:
    """What the cluster can hold: 2 copies, or fewer when fewer storage
    nodes are up (a one-node lab has one), and the warning that says so
    (the caller shows it once the image is made: a refused request shows
    its error line alone)."""
    storage = sum(1 for n in cl.nodes() if n["role"] == "storage" and n["healthy"])
    if storage >= DEFAULT_MIN_REPLICAS:
        return DEFAULT_MIN_REPLICAS, None
    count = max(storage, 1)
    return count, (f"warning: {storage} storage node(s) up: min_replicas {count} (not {DEFAULT_MIN_REPLICAS}), "
                   f"so the image can be available; pass --min-replicas to choose")


def _put(cl, name: str, min_replicas: int | None, **spec) -> tuple[dict, str | None]:
    """PUT an image, min_replicas (when not given) what the cluster holds;
    returns it and the warning to show once the command has succeeded."""
    warning = None
    if not min_replicas:
        min_replicas, warning = min_replicas_default(cl)
    return cl.put_image(name, min_replicas=min_replicas, **spec), warning


def _wait_available(cl, name: str, timeout: float) -> dict:
    def check():
        img = cl.get_image(name)
        if img is None:
            raise click.ClickException(f"image '{name}' was deleted")
        if img["status"] == "error":
            raise click.ClickException(f"image '{name}' is in error: {img.get('message')}")
        return img if img["status"] == "available" else None

    def show(_elapsed) -> str:
        img = cl.get_image(name) or {}
        return f"image {name}: {img.get('status')} ({img.get('message', '')})"
    return wait_until(check, timeout, f"image '{name}' available", show=show)


@click.group("image")
def image():
    """Guest images: register, upload, list; build the demo images."""


read_commands(image, "image", existing_names, lambda cl, name: cl.get_image(name),
              images_table, image_table)


@image.command("create")
@click.argument("name")
@click.option("--source-url", required=True, help="where storage nodes fetch it: http(s)://... or file://...")
@click.option("--format", "format_", type=click.Choice(["raw", "qcow2"]), default="raw", show_default=True)
@click.option("--min-replicas", type=click.IntRange(min=1),
              help="copies before it is available (default: 2, or what the cluster's storage nodes can hold)")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="a label; repeatable")
@wait_options("the image is available")
@output_option
def create(name, source_url, format_, min_replicas, labels, wait, timeout, output):
    """Register an image that the storage nodes fetch from a URL."""
    cl = client()
    before = cl.get_image(name)
    spec = {"source_url": source_url, "format": format_, "labels": labels_arg(labels)}
    img, warning = _put(cl, name, min_replicas or (before["min_replicas"] if before else None), **spec)
    if warning:
        note(warning)
    verb = "created" if before is None else "unchanged" if before["etag"] == img["etag"] else "updated"
    if wait:
        img = _wait_available(cl, name, timeout)
    done(f"image {name} {verb}: {img['status']} ({img.get('message', '')})", img)


@image.command("upload")
@name_argument(existing_names)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--format", "format_", type=click.Choice(["raw", "qcow2"]),
              help="the file's format (default raw; an existing image keeps its own)")
@click.option("--min-replicas", type=click.IntRange(min=1),
              help="copies before it is available (default: 2, or what the cluster's storage nodes can hold); "
                   "on an existing image, changes it")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="a label; repeatable")
@wait_options("the image is available (its min_replicas copies made)")
@output_option
def upload(name, file, format_, min_replicas, labels, wait, timeout, output):
    """Create an image (unless it exists) and stream a local file into it.

    If the image was made by this command and the upload fails (a format
    mismatch, a broken connection), the image is deleted again: no orphan
    stays pending."""
    cl = client()
    path = Path(file)
    existing = cl.get_image(name)
    created, warning = False, None
    if existing is None:
        _, warning = _put(cl, name, min_replicas, format=format_ or "raw", labels=labels_arg(labels))
        created = True
    else:
        if format_ and format_ != existing["format"]:
            raise click.ClickException(f"image '{name}' exists with format {existing['format']}, and the format "
                                       f"cannot change: delete it first or upload under another name")
        changes = {}
        if min_replicas and min_replicas != existing["min_replicas"]:
            changes["min_replicas"] = min_replicas
        if labels:
            changes["labels"] = dict(existing["labels"], **labels_arg(labels))
        if changes:
            spec = {"format": existing["format"], "min_replicas": existing["min_replicas"],
                    "labels": existing["labels"], **changes}
            if existing.get("source_url"):
                spec["source_url"] = existing["source_url"]
            cl.put_image(name, **spec)
            note(f"image {name}: " + ", ".join(f"{k} {existing[k]} -> {v}" for k, v in changes.items()))
    size = path.stat().st_size
    progress = Progress()
    t0 = time.monotonic()
    shown = [0.0]

    def show(sent: int, total: int) -> None:
        now = time.monotonic()
        if sent < total and now - shown[0] < (0.2 if progress.tty else 5):
            return
        shown[0] = now
        rate = sent / max(now - t0, 1e-6) / (1 << 20)
        progress.show(f"uploading {name}: {sent / (1 << 20):.0f}/{total / (1 << 20):.0f} MiB ({rate:.0f} MiB/s)")
    note(f"checksumming {path} ({size / (1 << 20):.0f} MiB)")
    try:
        img = cl.upload_image(name, path, progress=show)
    except BaseException:
        progress.done()
        if created:
            try:
                cl.delete_image(name)
                note(f"image {name} (made for this upload) deleted again")
            except Exception as exc:          # the upload's error is the one to report
                note(f"image {name} (made for this upload) could not be deleted: {exc}")
        raise
    progress.done()
    if warning:
        note(warning)
    if wait and img["status"] != "available":
        img = _wait_available(cl, name, timeout)
    done(f"image {name}: {img['status']} ({img.get('message', '')}), sha256 {img['sha256']}, "
         f"{time.monotonic() - t0:.1f}s", img)


@image.command("delete")
@name_argument(existing_names)
@wait_options("it is gone", default_timeout=120)
@output_option
def delete(name, wait, timeout, output):
    """Delete an image (refused while a group uses it)."""
    cl = client()
    delete_and_wait(f"image '{name}'", lambda: cl.get_image(name), lambda: cl.delete_image(name), wait, timeout)


@image.command("build-demo")
@click.argument("out", type=click.Path(dir_okay=False))
def build_demo(out):
    """Build the tiny demo guest image from Debian packages."""
    from cowfleet.guest.builder import build_demo_image
    t0 = time.monotonic()
    path = build_demo_image(out)
    click.echo(f"built {path} ({path.stat().st_size // (1 << 20)} MiB) in {time.monotonic() - t0:.1f}s")


@image.command("build-debian")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--rebuild", is_flag=True, help="build again even if the recipe's image is cached")
def build_debian(out, rebuild):
    """Build a minimal Debian 12 cloud image with cloud-init (from Debian
    packages; cached by recipe)."""
    from cowfleet.guest.debian import build_debian_image
    t0 = time.monotonic()
    path = build_debian_image(out, progress=lambda line: print(line, file=sys.stderr, flush=True),
                              rebuild=rebuild)
    click.echo(f"built {path} ({path.stat().st_size // (1 << 20)} MiB, raw; upload it with "
               f"'cowfleet image upload NAME {path}') in {time.monotonic() - t0:.1f}s")

