"""Ray's own token authentication for panray's cluster (``RAY_AUTH_MODE=token``, Ray 2.60).

With token mode on, every gRPC call to Ray's GCS, raylets and workers must carry the cluster's
token, so a process that knows only the address (from ``cluster.json`` or a port scan) is refused.
Ray reads the mode from ``RAY_AUTH_MODE`` and the token from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; raylets and workers inherit both from the process
that starts them. panray gives each embedded cluster a fresh random token in
``PANRAY_HOME/ray_token`` (0600 in the 0700 home) and passes only its path, never the token: it is
not in any environment, log or output. Payloads get neither variable (``clean_environment``).

Examples:
    >>> import tempfile
    >>> home = Path(tempfile.mkdtemp())
    >>> path = new_token(home)
    >>> len(path.read_text()), oct(path.stat().st_mode & 0o777)
    (64, '0o600')
    >>> known_token(home) == path
    True
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from panray.home import write_private

TOKEN_FILE = "ray_token"
MODE_VAR, PATH_VAR, TOKEN_VAR = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"


def new_token(home: Path) -> Path:
    """A fresh 256-bit token for a cluster about to start in ``home``; returns its file."""
    return write_private(home / TOKEN_FILE, secrets.token_hex(32))


def known_token(home: Path) -> Path | None:
    """The token file of the embedded cluster of ``home``, if there is one."""
    path = home / TOKEN_FILE
    return path if path.exists() else None


def use_token(path: Path) -> None:
    """Token mode for this process and every Ray process it starts, with the token in ``path``.

    Call before ``ray.init`` or starting a cluster; Ray caches its config and the token, so both
    are reloaded here.
    """
    os.environ[MODE_VAR] = "token"
    os.environ[PATH_VAR] = str(path)
    os.environ.pop(TOKEN_VAR, None)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
