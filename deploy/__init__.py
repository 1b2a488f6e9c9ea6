"""Kubernetes deployment of panray: values files, the renderer, the container image definition.

``panray deploy render --values production | kubectl apply -f -`` installs it; see README.
"""

from panray.deploy.render import render, to_yaml
from panray.deploy.values import Values, load_values

__all__ = ["Values", "load_values", "render", "to_yaml"]
