"""Deprecated path of checkpoints (atomic_write and friends are in pyro_vae.files): use :mod:`pyro_vae.runs` (moved in 0.2; this path goes in 0.3)."""

from pyro_vae.deprecated import ALIASES, forwarder

__getattr__ = forwarder(__name__, ALIASES[__name__])
