"""Deprecated path of the built-in VAE and its parts: use :mod:`pyro_vae.stories` (moved in 0.2; this path goes in 0.3)."""

from pyro_vae.deprecated import ALIASES, forwarder

__getattr__ = forwarder(__name__, ALIASES[__name__])
