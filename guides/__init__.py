"""The inference side: encoder bodies and the amortized guides built on them."""

from pyro_vae.guides.amortized import (
                                       GUIDES,
                                       AmortizedGuide,
                                       DiagonalNormalHead,
                                       FullRankNormalHead,
                                       IAFHead,
)
from pyro_vae.guides.auto import AutoAmortizedGuide
from pyro_vae.guides.conditional import ConditionalGuide
from pyro_vae.guides.encoders import ENCODERS, MLPEncoder
from pyro_vae.guides.semisupervised import (
                                       AuxiliaryGuide,
                                       Classifier,
                                       ClassifierGuide,
                                       MeanCode,
                                       StackedGuide,
)

__all__ = ["ENCODERS", "GUIDES", "AmortizedGuide", "AutoAmortizedGuide", "AuxiliaryGuide",
           "Classifier", "ClassifierGuide", "ConditionalGuide", "DiagonalNormalHead",
           "FullRankNormalHead", "IAFHead", "MLPEncoder", "MeanCode", "StackedGuide"]
