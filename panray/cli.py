"""panray: submit, follow, triage and control huge DAG workflows across USDF, FrDF and UKDF.

Every command takes the global options before it (``panray --home DIR jobs 7``); every expected
failure is one line on stderr and exit code 2 (``--debug``: the traceback). Output is a table
fitted to the terminal, the plain table when piped, or JSON with ``--json``. Shell completion:
``eval "$(_PANRAY_COMPLETE=bash_source panray)"`` (``zsh_source``, ``fish_source``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from panray import cli_control, cli_logs, cli_read
from panray.cli_common import (
    CONTEXT,
    Globals,
    example,
    json_option,
    json_out,
    no_wait_needs_a_server,
    run_and_show,
    said,
    session,
    settings_of,
)
from panray.exceptions import PanrayError

if TYPE_CHECKING:
    from panray.api import Panray


@click.group(context_settings=CONTEXT, help=(__doc__ or "").split("\n\n")[0] + example(
    "panray submit campaign.yaml", "panray status", "panray jobs 7 --status failed --limit 20",
    "panray errors 7", "panray retry 7 --job 120 --memory 8000"))
@click.option("--config", metavar="FILE", help="YAML settings file (default: $PANRAY_CONFIG)")
@click.option("--db", metavar="URL", help="state store URL: sqlite:///path or postgresql://... (default: $PANRAY_DB)")
@click.option("--home", metavar="DIR", help="panray home directory (default: $PANRAY_HOME or ~/.panray)")
@click.option("--debug", is_flag=True, help="show the traceback of an error")
@click.option("--url", metavar="URL", help="a panray server's HTTP API, e.g. http://127.0.0.1:8470 (default: $PANRAY_URL)")
@click.option("--token", metavar="T", help="bearer token for --url (default: $PANRAY_TOKEN, else PANRAY_HOME/token)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, db: str | None, home: str | None, debug: bool, url: str | None,
        token: str | None) -> None:
    ctx.obj = Globals(config, db, home, url, token, debug)



# -- submit ---------------------------------------------------------------------------------------


@cli.command(help="Run a ci_hsc-shaped demo campaign across the three sites." + example(
    "panray demo", "panray demo --visits 3 --detectors 2"))
@click.option("--visits", type=int, default=11, show_default=True, help="visits of the demo graph")
@click.option("--detectors", type=int, default=3, show_default=True, help="detectors per visit")
@session
def demo(pr: Panray, visits: int, detectors: int) -> int:
    from panray.demo import demo_workflow

    wf = demo_workflow(visits=visits, detectors=detectors)
    ids = pr.submit(wf)
    print(f"submitted demo workflow {ids[0]}: {len(wf.jobs) + 1} jobs across {', '.join(r['site'] for r in pr.sites())}")
    code = run_and_show(pr, ids, wait=True)
    per_site: dict[str, int] = {}
    for j in pr.jobs(ids[0]):
        per_site[j.site or "-"] = per_site.get(j.site or "-", 0) + 1
    print("\njobs per site: " + ", ".join(f"{k} {v}" for k, v in sorted(per_site.items())))
    return code


@cli.command(help="Validate, persist and run a campaign or workflow file (YAML or JSON)." + example(
    "panray submit campaign.yaml", "panray --url http://127.0.0.1:8470 submit wf.yaml --no-wait"))
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--no-wait", is_flag=True,
              help="print the ids and return; needs a server (`panray serve`) or a cluster to keep running it")
@session
def submit(pr: Panray, file: str, no_wait: bool) -> int:
    from panray.models import load_campaign_file

    campaign = load_campaign_file(file, max_jobs=pr.settings.max_workflow_jobs)
    no_wait_needs_a_server(pr, no_wait, "submit", "stored")
    ids = pr.submit_campaign(campaign)
    return run_and_show(pr, ids, wait=not no_wait)



# -- sites, prompt -------------------------------------------------------------------------------


@cli.group(help="Site operations: the catalog with live figures, and site statuses.")
def site() -> None:
    pass


@site.command("list", help="Per site: status, DRP share, nodes, pilots, queued, running, finished, failed."
              + example("panray site list", "panray site list --json"))
@json_option
@session
def site_list(pr: Panray, as_json: bool) -> int:
    from panray.cli_output import show

    rows = pr.sites()
    if as_json:
        json_out(rows)
        return 0
    show(["site", "status", "DRP share", "nodes", "pilots", "queued", "running", "finished", "failed"],
         [(r["site"], r["status"], f"{r['drp_share']:.0%}", "-" if r["nodes"] is None else r["nodes"] or "none",
           *("-" if r[k] is None else r[k] for k in ("pilots", "queued", "running")), r["finished"], r["failed"])
          for r in rows])
    return 0


@site.command("set-status", help="online, brokeroff (only pinned work) or offline (re-brokers its queue); kept "
              "across restarts." + example("panray site set-status UKDF offline"))
@click.argument("name", metavar="SITE")
@click.argument("new_status", metavar="STATUS", type=click.Choice(["online", "brokeroff", "offline"]))
@json_option
@session
def site_status(pr: Panray, name: str, new_status: str, as_json: bool) -> int:
    applied = pr.set_site_status(name, new_status)
    said(as_json, f"site {name}: {new_status}" + ("" if applied else " (recorded; applied when the cluster starts)"),
          site=name, status=new_status, applied=applied)
    return 0


@cli.group(help="Prompt processing at USDF: warm pilots, push, cache affinity.")
def prompt() -> None:
    pass


def _detectors(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise PanrayError(f"--detectors {text[:60]!r}: expected comma-separated detector numbers, e.g. 0,1,2") from None


@prompt.command(help="Notify the standing task of new visits." + example(
    "panray prompt notify --visit 1", "panray prompt notify --visit 10 --visits 5 --detectors 0,1,2"))
@click.option("--visit", type=int, required=True, help="the (first) visit number")
@click.option("--visits", type=int, default=1, show_default=True, help="this many visits back to back")
@click.option("--detectors", help="comma-separated detector numbers (default: all)")
@click.option("--instrument", default="LSSTCam", show_default=True, help="instrument of the visits")
@session
def notify(pr: Panray, visit: int, visits: int, detectors: str | None, instrument: str) -> int:
    print(pr.prompt_notify(visit, visits=visits, detectors=_detectors(detectors) if detectors else None,
                           instrument=instrument))
    return 0


@prompt.command(help="Latency percentiles and cache hit rate." + example("panray prompt stats"))
@click.option("--instrument", help="only this instrument")
@session
def stats(pr: Panray, instrument: str | None) -> int:
    from panray import prompt as prompt_client

    pr._connect(start=False)
    print(prompt_client.format_stats(prompt_client.stats(instrument)))
    return 0


# -- server, tokens, benchmarks, deploy ----------------------------------------------------------


@cli.command(help="Keep the cluster and panray's actors up and serve the HTTP API; --stop stops the server of "
             "this home." + example("panray serve", "panray serve --stop"))
@click.option("--stop", is_flag=True, help="stop the server of this home and its cluster; warns of work running")
@click.pass_obj
def serve(g: Globals, stop: bool) -> int:
    """Runs without a Panray session: the server is the service, never a client of one."""
    from panray import serve as server

    settings = settings_of(g)
    if stop:
        return server.stop_server(settings)
    return server.serve(settings)


#: ``panray bench NAME``: the benchmark scripts of a checkout, with defaults that fit a laptop.
BENCHMARKS = {
    "dag_throughput": ["--jobs", "10000", "--backends", "sqlite", "--baselines", "ray"],
    "submit": ["--jobs", "200000", "--backends", "sqlite"],
    "concurrent": ["--jobs", "200000"],
    "subprocess": ["--jobs", "3000"],
    "prompt_latency": [],
    "recovery": [],
    "campaign": ["--workflows", "200", "--jobs", "1000"],
}


@cli.command(help="Print a token signed with the home's local key (the embedded server's issuer)." + example(
    "panray token", "panray token --user erin --role production --hours 1"))
@click.option("--user", help="user name (default: the local user)")
@click.option("--role", multiple=True, type=click.Choice(["user", "production", "admin"]),
              help="role to grant (repeatable; default: all, as the local user has embedded)")
@click.option("--hours", type=float, default=24.0, show_default=True, help="lifetime")
@click.pass_obj
def token(g: Globals, user: str | None, role: tuple[str, ...], hours: float) -> int:
    import getpass

    from panray.identity import Role
    from panray.server.auth import issue_token

    roles = [Role(r) for r in role] if role else list(Role)
    print(issue_token(settings_of(g), user or getpass.getuser(), {Role.USER, *roles}, hours=hours))
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
             help="Run a benchmark script of a source checkout with sensible defaults." + example(
                 "panray bench submit", "panray bench submit --jobs 500 --backends sqlite"))
@click.argument("name", type=click.Choice(sorted(BENCHMARKS)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        raise PanrayError(f"panray bench runs the scripts of a source checkout; {root} has no benchmarks/")
    module = "subprocess_payloads" if name == "subprocess" else name
    argv = [sys.executable, "-m", f"benchmarks.{module}", *(args or BENCHMARKS[name])]
    return subprocess.run(argv, cwd=root).returncode


@cli.group(help="Kubernetes manifests: KubeRay, CloudNativePG, the server.")
def deploy() -> None:
    pass


@deploy.command(help="Print the manifests of an install as YAML." + example(
    "panray deploy render | kubectl apply -f -", "panray deploy render --values production -o install.yaml"))
@click.option("--values", multiple=True, metavar="FILE",
              help="values file, repeatable, later wins; laptop or production name the packaged ones (default: laptop)")
@click.option("--output", "-o", help="write to this file instead of standard output")
def render(values: tuple[str, ...], output: str | None) -> int:
    from panray.deploy.command import render_manifests

    return render_manifests(list(values), output)




for _module_commands in (cli_read.COMMANDS, cli_control.COMMANDS, cli_logs.COMMANDS):
    for _command in _module_commands:
        cli.add_command(_command)


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and exit 2 (``--debug``: traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[: next((k for k, a in enumerate(args) if a in cli.commands), len(args))]
    try:
        return int(cli.main(args=args, prog_name="panray", standalone_mode=False) or 0)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        print(f"panray: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, click.Abort):
        return 130
    except (PanrayError, OSError) as exc:
        if debug:
            raise
        print(f"panray: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if debug:
            raise
        print(f"panray: internal error: {type(exc).__name__}: {str(exc)[:200]} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
