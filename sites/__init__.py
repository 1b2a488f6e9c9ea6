"""Sites: the facility catalog (``sites.yaml``) and the brokerage policy that picks a site per job.

Both are pure Python: the control plane feeds brokerage the live counts and applies its decisions.
"""

from panray.sites.brokerage import (
    LOCALITY,
    Decision,
    JobRequest,
    SiteLoad,
    broker,
    candidates,
    format_explanation,
    throttle_allowance,
    weight,
)
from panray.sites.catalog import SiteCatalog, SiteConfig, SiteStatus, load_catalog, parse_catalog

__all__ = [
    "LOCALITY",
    "Decision",
    "JobRequest",
    "SiteCatalog",
    "SiteConfig",
    "SiteLoad",
    "SiteStatus",
    "broker",
    "candidates",
    "format_explanation",
    "load_catalog",
    "parse_catalog",
    "throttle_allowance",
    "weight",
]
