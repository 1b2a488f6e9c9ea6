"""``panray deploy render``: print the install's manifests, for ``| kubectl apply -f -``.

It needs no state store and no cluster: rendering runs before either exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

from panray.deploy.render import render, to_yaml
from panray.deploy.values import load_values


def render_manifests(values: list[str], output: str | None) -> int:
    """``panray deploy render``: the manifests of the values files (default: laptop) to ``output`` or stdout."""
    text = to_yaml(render(load_values(values or ["laptop"])))
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
