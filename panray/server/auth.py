"""Bearer tokens: who a request comes from, verified with PyJWT against a key set.

Production trusts an external issuer (e.g. Indigo IAM): its JWKS from a file or an https URL
(``auth_jwks``), its ``iss`` and ``aud``, the user name from ``auth_user_claim`` and roles from the
groups claim through ``auth_roles`` (``/rubin/Role=production: production``). Embedded, ``panray
serve`` keeps a local RSA key in ``PANRAY_HOME`` (mode 0600) and ``panray token`` signs with it.
Only RS256 and ES256 are accepted: ``alg=none`` and HMAC tokens are refused before any key is
looked at, and expiry, issuer and audience are always required.

Examples:
    >>> s = Settings(home=Path(tempfile.mkdtemp()))                       # doctest: +SKIP
    >>> token = issue_token(s, "alice", [Role.USER], hours=1)              # doctest: +SKIP
    >>> Authenticator(s).identify(token)                                   # doctest: +SKIP
    Identity(user='alice', roles=frozenset({<Role.USER: 'user'>}))
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from panray.config import Settings
from panray.exceptions import AuthenticationError, ConfigError
from panray.identity import Identity, Role

__all__ = ["ALGORITHMS", "Authenticator", "issue_token", "local_key", "save_token", "token_file"]

#: Asymmetric signatures only: a symmetric or absent one would let whoever holds the public key sign.
ALGORITHMS = ("RS256", "ES256")
KEY_FILE = "server-key.pem"
TOKEN_FILE = "token"
LOCAL_KID = "panray-local"


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def local_key(settings: Settings, *, create: bool = False) -> rsa.RSAPrivateKey:
    """The home's signing key (``PANRAY_HOME/server-key.pem``), made on first use if ``create``."""
    path = settings.home / KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigError(f"no signing key {path}; start `panray serve` once to create it")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ConfigError(f"{path} is not an RSA private key")
    return loaded


def token_file(settings: Settings) -> Path:
    """Where ``panray serve`` leaves a token of its local user for clients in the same home."""
    return settings.home / TOKEN_FILE


def issue_token(settings: Settings, user: str, roles: Iterable[Role], *, hours: float = 24.0) -> str:
    """A token for ``user`` signed with the local key, carrying ``roles`` as groups."""
    if settings.auth_jwks is not None:
        raise ConfigError(f"this panray trusts the issuer {settings.auth_issuer} ({settings.auth_jwks}); "
                          "get a token from it, `panray token` signs only for the embedded server")
    groups = {role: group for group, role in settings.auth_roles.items()}
    now = int(time.time())
    claims = {"iss": settings.auth_issuer, "aud": settings.auth_audience, settings.auth_user_claim: user,
              "iat": now, "exp": now + int(hours * 3600), settings.auth_groups_claim: [groups[r] for r in roles
                                                                                       if r in groups]}
    return jwt.encode(claims, local_key(settings), algorithm="RS256", headers={"kid": LOCAL_KID})


def save_token(settings: Settings, token: str) -> Path:
    path = token_file(settings)
    _write_private(path, token.encode())
    return path


class Authenticator:
    """Turns a bearer token into an :class:`Identity`, or raises :class:`AuthenticationError`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: jwt.PyJWKClient | None = None
        self._keys: dict[str | None, Any] = {}
        source = settings.auth_jwks
        if source is None:
            public = local_key(settings, create=True).public_key()
            self._keys = {LOCAL_KID: public, None: public}
        elif source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=3600, timeout=10)
        else:
            try:
                keyset = jwt.PyJWKSet.from_json(Path(source).read_text())
            except (OSError, jwt.PyJWTError, ValueError) as exc:
                raise ConfigError(f"auth_jwks {source}: cannot read the key set: {exc}") from None
            self._keys = {k.key_id: k.key for k in keyset.keys}
            if len(keyset.keys) == 1:
                self._keys[None] = keyset.keys[0].key

    def _key(self, token: str, kid: str | None) -> Any:
        if self._client is not None:
            try:
                return self._client.get_signing_key_from_jwt(token).key
            except jwt.PyJWTError as exc:
                raise AuthenticationError(f"token signing key not found at the issuer: {exc}") from None
        if kid not in self._keys:
            raise AuthenticationError(f"token signed with unknown key {kid!r}")
        return self._keys[kid]

    def identify(self, token: str) -> Identity:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError(f"token algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
        try:
            claims = jwt.decode(
                token, self._key(token, header.get("kid")), algorithms=[alg], audience=s.auth_audience,
                issuer=s.auth_issuer, options={"require": ["exp", "iss", "aud", s.auth_user_claim]}, leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        user = claims[s.auth_user_claim]
        if not isinstance(user, str) or not user:
            raise AuthenticationError(f"token claim {s.auth_user_claim!r} is not a user name")
        groups = _claim(claims, s.auth_groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        roles = {Role.USER} | {s.auth_roles[g] for g in groups or () if isinstance(g, str) and g in s.auth_roles}
        return Identity(user, frozenset(roles))


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name; a dotted name also finds nested objects (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value

