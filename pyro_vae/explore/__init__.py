"""The latent space you can touch: ``explorer.html``, one self-contained page per run
(:mod:`~pyro_vae.explore.page`), from the numbers of :mod:`~pyro_vae.explore.spec`: the
plane, the prior and q(z | x) (:mod:`~pyro_vae.explore.scene`) and the decoder, as weights
or as a grid (:mod:`~pyro_vae.explore.decoding`).
"""

from pyro_vae.explore.decoding import LAWS, Decoding, Family, HoldOthers, mlp_layers
from pyro_vae.explore.page import (
                                   EXPLORER_FILE,
                                   ExplorerPage,
                                   NoRealLatentError,
                                   choose_site,
                                   real_sites,
                                   render,
                                   write_explorer,
)
from pyro_vae.explore.scene import Plane, Window
from pyro_vae.explore.spec import explorer_spec

__all__ = [
    "Decoding",
    "EXPLORER_FILE",
    "ExplorerPage",
    "explorer_spec",
    "Family",
    "HoldOthers",
    "LAWS",
    "mlp_layers",
    "NoRealLatentError",
    "Plane",
    "choose_site",
    "real_sites",
    "render",
    "write_explorer",
    "Window",
]
