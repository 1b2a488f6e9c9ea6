"""Packaged configuration files (sites.yaml)."""
