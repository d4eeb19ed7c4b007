"""Deprecated path of the run folder's writer lock: use :mod:`pyro_vae.runs` (moved in 0.2; this path goes in 0.3)."""

from pyro_vae.deprecated import ALIASES, forwarder

__getattr__ = forwarder(__name__, ALIASES[__name__])
