"""``cowfleet lab``, ``demo``, ``serve`` and ``terraform install``: running
cowfleet itself (the embedded lab, the control service, the provider)."""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click

from cowfleet.cli.common import client, note
from cowfleet.cli.groups import instances_table, watch_group
from cowfleet.config import LAB_DIR_DEFAULT, SECRET_FILE_VAR, lab_dir

DEMO_CACHE = "/var/cache/cowfleet/demo.raw"
DIR_OPTION = click.option("--dir", "directory", help="lab folder (default: $COWFLEET_LAB_DIR or /var/lib/cowfleet/lab)")


def down_command(directory) -> str:
    """The command that takes the lab in ``directory`` down: with its --dir
    (absolute, quoted) unless a bare command would look there too."""
    directory = Path(directory).resolve()
    if directory == Path(LAB_DIR_DEFAULT).resolve() == lab_dir().resolve():
        return "cowfleet lab down"
    return f"cowfleet lab down --dir {shlex.quote(str(directory))}"


@click.group("lab")
def lab():
    """The embedded lab: one node, or racks of network namespaces."""


@lab.command("up")
@DIR_OPTION
@click.option("--racks", type=click.IntRange(min=0), default=0,
              help="the racks lab: this many racks, every node in its own network namespace "
                   "(default: the one-node lab on loopback)")
@click.option("--nodes-per-rack", type=click.IntRange(min=1), default=2, show_default=True,
              help="compute nodes per rack (racks lab)")
@click.option("--zk", type=click.Choice(["1", "3", "5"]), default="3", show_default=True,
              help="ZooKeeper ensemble members (racks lab)")
@click.option("--fake", is_flag=True, help="racks lab: compute agents use the fake hypervisor (no VMs), storage agents the fake exporter (no tgtd)")
def up(directory, racks, nodes_per_rack, zk, fake):
    """Start the lab; returns when every component is healthy. Prints
    COWFLEET_ENDPOINT and COWFLEET_TOKEN on stdout (progress on stderr)."""
    from cowfleet.lab.lab import open_lab
    existing = open_lab(directory)
    if existing.state is not None and (type(existing).__name__ == "RacksLab") != bool(racks):
        raise click.ClickException(f"another kind of lab is up in {existing.dir}: "
                                   f"'{down_command(existing.dir)}' first")
    if racks:
        from cowfleet.lab.racks import RacksLab
        the_lab = RacksLab(directory, racks=racks, nodes_per_rack=nodes_per_rack, zk=int(zk), fake=fake)
        note(f"starting the racks lab in {the_lab.dir}: {zk} ZooKeeper, 1 service, {racks} rack(s) "
             f"x (1 storage + {nodes_per_rack} compute), each node in its own network namespace")
    else:
        from cowfleet.lab.lab import Lab
        the_lab = Lab(directory)
        note(f"starting the one-node lab in {the_lab.dir}")
    st = the_lab.up(progress=note)
    click.echo(f"COWFLEET_ENDPOINT={st.endpoint}")
    click.echo(f"COWFLEET_TOKEN={st.token}")
    click.echo(f"{SECRET_FILE_VAR}={the_lab.secret_file}")     # where the cluster secret is, never the secret
    note(f"# written to {the_lab.env_file}; '{down_command(the_lab.dir)}' stops everything")


@lab.command("down")
@DIR_OPTION
def down(directory):
    """Stop the lab and remove everything it made."""
    from cowfleet.lab.lab import open_lab, remove_orphans
    the_lab = open_lab(directory)
    if the_lab.state is None:
        click.echo(f"no lab in {the_lab.dir}")
        remove_orphans(progress=note)     # still: the bridges of labs whose folder is gone
        return
    note(f"stopping the lab in {the_lab.dir}")
    the_lab.down(progress=note)


@lab.command("status")
@DIR_OPTION
def status(directory):
    """Show the lab's components and their health (exit 1 if one is not healthy, 3 if no lab)."""
    from cowfleet.cli.common import table
    from cowfleet.lab.lab import open_lab
    rows = open_lab(directory).status()
    if not rows:
        click.echo(f"no lab in {open_lab(directory).dir}")
        sys.exit(3)
    click.echo(table(["COMPONENT", "HEALTH", "DETAIL"], rows))
    if not all(h in ("running", "healthy", "registered") for _, h, _ in rows):
        sys.exit(1)


@click.command("demo")
@click.option("--size", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--image", "image_path", help=f"demo image path (built if missing; default {DEMO_CACHE})")
@click.option("--timeout", type=click.FloatRange(min=0), default=600, show_default=True)
def demo(size, image_path, timeout):
    """Register the demo image and run group 'demo' on the lab (progress on stderr)."""
    from cowfleet.guest.builder import build_demo_image, is_current
    image = Path(image_path or DEMO_CACHE)
    if not is_current(image):
        note(f"building the demo guest image {image} from Debian packages")
        t0 = time.monotonic()
        build_demo_image(image)
        note(f"  built in {time.monotonic() - t0:.1f}s")
    cl = client()
    img = cl.put_image("demo", source_url=f"file://{image.resolve()}", format="raw", min_replicas=1,
                       labels={"purpose": "demo"})
    t0 = time.monotonic()
    while img["status"] != "available":
        if img["status"] == "error" or time.monotonic() - t0 > 60:
            raise click.ClickException(f"image demo is {img['status']}: {img.get('message')}")
        time.sleep(0.2)
        img = cl.get_image("demo")
    click.echo(f"image demo available: {img['size_bytes'] // (1 << 20)} MiB, sha256 {img['sha256'][:16]}…, "
               f"replicas on {', '.join(r['node'] for r in img['replicas'])}")
    existing = cl.get_group("demo")
    t_put = time.monotonic()
    g = cl.put_group("demo", image="demo", flavor="small", size=size)
    click.echo(f"PUT /v1/instance-groups/demo (size {size}) -> generation {g['generation']}, "
               f"phase {g['status']['phase']}" + (" (group existed)" if existing else ""))
    g = watch_group(cl, "demo", timeout, generation=g["generation"])
    s = g["status"]
    click.echo(f"demo: {s['ready']}/{g['size']} ready, phase {s['phase']}")
    click.echo(instances_table(g))
    ready = s["phase"] == "ready"
    click.echo(f"\nall {g['size']} running {g['_all_running']:.1f}s and ready {g['_elapsed']:.1f}s after the PUT"
               f" (PUT took {1000 * (time.monotonic() - t_put - g['_elapsed']):.0f} ms)"
               if ready else f"\ngroup is {s['phase']}: {s['message']}")
    click.echo(f"\nCOWFLEET_ENDPOINT={cl.endpoint}\nCOWFLEET_TOKEN={cl.token}")
    click.echo("try:      .venv/bin/cowfleet group list -o wide")
    click.echo("inspect:  .venv/bin/cowfleet group get demo")
    click.echo("scale:    .venv/bin/cowfleet group scale demo 5 --wait")
    click.echo("api:      curl -H \"Authorization: Bearer $COWFLEET_TOKEN\" $COWFLEET_ENDPOINT/v1/instance-groups/demo")
    down = down_command(lab_dir())
    click.echo("teardown: make lab-down   (or .venv/bin/cowfleet lab down)" if down == "cowfleet lab down"
               else f"teardown: .venv/bin/{down}")
    if not ready:
        sys.exit(1)


@click.command("serve")
@click.option("--bind", default="127.0.0.1:8080", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--zk", help="ZooKeeper connection string (default $COWFLEET_ZK)")
@click.option("--tokens", help="token file: 'TOKEN ROLE' lines (default $COWFLEET_TOKENS_FILE)")
def serve(bind, workers, zk, tokens):
    """Run the control service under gunicorn."""
    env = dict(os.environ)
    if zk:
        env["COWFLEET_ZK"] = zk
    if tokens:
        env["COWFLEET_TOKENS_FILE"] = tokens
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cowfleet-metrics-")
    cmd = [sys.executable, "-m", "gunicorn", "--config", "python:cowfleet.service.gunicorn_conf",
           "--bind", bind, "--workers", str(workers), "cowfleet.service:create_app()"]
    os.execve(sys.executable, cmd, env)


@click.group("terraform")
def terraform():
    """The Terraform provider."""


@terraform.command("install")
@click.option("--dir", "directory", help="where to install (default ~/.local/share/cowfleet/terraform)")
@click.option("--dev-override", is_flag=True,
              help="also a dev_overrides entry: no 'terraform init' needed (Terraform warns of it)")
def terraform_install(directory, dev_override):
    """Install the provider for a local Terraform and print the CLI config."""
    from cowfleet.provider.install import cmd_install
    sys.exit(cmd_install(SimpleNamespace(dir=directory, dev_override=dev_override)) or 0)
