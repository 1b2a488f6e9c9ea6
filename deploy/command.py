"""``panray deploy render``: print the install's manifests, for ``| kubectl apply -f -``.

It needs no state store and no cluster: rendering runs before either exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from panray.deploy.render import render, to_yaml
from panray.deploy.values import PACKAGED, load_values


def cmd_render(args: argparse.Namespace) -> int:
    text = to_yaml(render(load_values(args.values or ["laptop"])))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``deploy render`` to the ``panray`` command's subparsers."""
    dp = sub.add_parser("deploy", help="Kubernetes manifests: KubeRay, CloudNativePG, the server")
    dp_sub = dp.add_subparsers(dest="deploy_command", required=True)
    r = dp_sub.add_parser("render", help="print the manifests of an install as YAML")
    r.add_argument("--values", action="append", metavar="FILE",
                   help=f"values file, repeatable, later wins; {' or '.join(PACKAGED)} name the packaged ones "
                        "(default: laptop)")
    r.add_argument("--output", "-o", help="write to this file instead of standard output")
    r.set_defaults(func=cmd_render, local=True)  # no store, no cluster: runs before either exists
