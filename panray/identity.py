"""Who is asking: a user name and roles, as the service layer authorizes them.

Identities come from a verified token (:mod:`panray.server.auth`) or, embedded, from the local OS
user, who holds every role so that the single-user experience is unchanged.

Examples:
    >>> alice = Identity("alice", frozenset({Role.USER}))
    >>> alice.has(Role.PRODUCTION), local_identity().has(Role.ADMIN)
    (False, True)
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    """What a user may do beyond reading."""

    USER = "user"  #: read everything; submit; act on own workflows
    PRODUCTION = "production"  #: act on anyone's workflows; site status; prompt notifications
    ADMIN = "admin"  #: everything production may, and administration of the service


#: Roles that may act on a workflow they do not own (PanDA: the production role; iDDS: super user).
OPERATOR_ROLES = frozenset({Role.PRODUCTION, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user; ``roles`` always include :attr:`Role.USER`."""

    user: str
    roles: frozenset[Role] = frozenset({Role.USER})

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def operator(self) -> bool:
        """May act on other users' workflows and on sites."""
        return bool(self.roles & OPERATOR_ROLES)


def local_identity() -> Identity:
    """The OS user of this process with every role: embedded panray is its user's own system."""
    return Identity(getpass.getuser(), frozenset(Role))
