"""Names of panray's actors in Ray's ``panray`` namespace: what operators see in the dashboard.

Examples:
    >>> queue_name("FrDF"), pilot_name("USDF", 3)
    ('site-queue:FrDF', 'pilot:USDF:3')
"""

from __future__ import annotations

import hashlib


def manager_name(db_url: str, workflow_id: int) -> str:
    """The Ray actor name of a workflow's manager in the ``panray`` namespace.

    Ids are unique per state store only, so the name carries a short digest of the store URL:
    one cluster may serve several stores (tests, staging and production catalogs).
    """
    digest = hashlib.sha1(db_url.encode()).hexdigest()[:8]
    return f"workflow-manager:{digest}:{workflow_id}"


def queue_name(site: str) -> str:
    return f"site-queue:{site}"


def pilot_name(site: str, n: int) -> str:
    return f"pilot:{site}:{n}"


BROKERAGE_NAME = "brokerage"
SUPERVISOR_NAME = "supervisor"
NAMESPACE = "panray"
