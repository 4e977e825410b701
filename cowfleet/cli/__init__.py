"""``cowfleet``: the command line (click), one module per command group.

Conventions (kubectl's, openstack's): ``NOUN VERB [NAME]``; ``-o
table|wide|json|yaml`` on every command that shows objects (json and yaml
print the API's objects as they are); ``--wait`` on changes, with progress on
stderr; results alone on stdout. Every error is one line on stderr,
``cowfleet: ...``, and a non-zero exit (2 for a bad command line), never a
traceback (``COWFLEET_DEBUG=1`` shows one for a bug).
"""
from __future__ import annotations

import logging
import os
import sys

import click

import cowfleet
from cowfleet.cli.common import OUTPUTS, Settings
from cowfleet.cli.flavors import flavor
from cowfleet.cli.groups import group
from cowfleet.cli.images import image
from cowfleet.cli.instances import instance
from cowfleet.cli.lab import demo, lab, serve, terraform
from cowfleet.cli.nodes import network, node
from cowfleet.cli.tokens import token
from cowfleet.config import CLI_ENVIRONMENT, environment_help

PROG = "cowfleet"
COMPLETE_VAR = "_COWFLEET_COMPLETE"


def _endpoint(_ctx, _param, value: str | None) -> str | None:
    """--endpoint checked as the command line is read: a bad one is a usage error (exit 2)."""
    from cowfleet.client import ConfigError, check_endpoint
    if not value:                   # absent or empty: $COWFLEET_ENDPOINT, else the lab's
        return None
    try:
        return check_endpoint(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             # \b: click keeps the block's lines as they are
             epilog="\b\n" + environment_help(CLI_ENVIRONMENT))
@click.option("--endpoint", metavar="URL", callback=_endpoint,
              help="the service, e.g. http://127.0.0.1:8080 (default: $COWFLEET_ENDPOINT, else the lab's)")
@click.option("--token", metavar="TOKEN", help="bearer token (default: $COWFLEET_TOKEN, else the lab's)")
@click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None,
              help="default output format of every command (table)")
@click.version_option(cowfleet.__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx, endpoint, token, output):
    """Fleets of ephemeral copy-on-write VMs.

    Endpoint and token come from --endpoint/--token, else COWFLEET_ENDPOINT/
    COWFLEET_TOKEN, else the file 'cowfleet lab up' wrote.
    Shell completion: eval "$(cowfleet completion bash)" (or zsh)."""
    ctx.obj = Settings(endpoint=endpoint, token=token, output=output)


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script: eval "$(cowfleet completion bash)"."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, PROG, COMPLETE_VAR).source())


for command in (group, image, flavor, node, instance, network, token, lab, demo, serve, terraform):
    cli.add_command(command)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)   # errors are reported as one line
    import requests
    from kazoo.exceptions import NoAuthError
    from kazoo.handlers.threading import KazooTimeoutError

    from cowfleet.client import ApiError, ConfigError
    from cowfleet.guest.builder import BuildError
    from cowfleet.lab.components import LabError

    def fail(message: str, code: int = 1) -> int:
        click.echo(f"{PROG}: {_one_line(message)}", err=True)
        return code
    try:
        rv = cli.main(args=argv, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return fail("interrupted", 130)
    except click.UsageError as exc:
        path = exc.ctx.command_path.removeprefix(PROG).strip() if exc.ctx is not None else ""
        where = f"{path}: " if path else ""
        return fail(where + exc.format_message(), exc.exit_code)
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (fail(str(exc.code)) if exc.code else 0)
    except KeyboardInterrupt:
        return 130
    except ApiError as exc:
        return fail(str(exc))
    except LabError as exc:
        return fail(str(exc))
    except (ConfigError, BuildError, TimeoutError, RuntimeError, ValueError) as exc:
        return fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KazooTimeoutError:
        return fail("cannot reach ZooKeeper (check --zk)")
    except NoAuthError as exc:        # a closed cluster and no (or another) secret: zk/connection.py says which
        return fail(str(exc) or "ZooKeeper refuses this session: check COWFLEET_SECRET_FILE")
    except requests.ConnectionError as exc:
        return fail(f"cannot reach the service: {exc.request.url if exc.request else exc}")
    except requests.RequestException as exc:
        return fail(f"the request failed: {exc}")
    except OSError as exc:
        return fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except Exception as exc:
        if os.environ.get("COWFLEET_DEBUG"):
            raise
        return fail(f"unexpected error ({type(exc).__name__}): {exc}; COWFLEET_DEBUG=1 shows where")


if __name__ == "__main__":
    sys.exit(main())
