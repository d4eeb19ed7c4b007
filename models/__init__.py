"""The generative side: stories, priors, likelihoods, decoders and the networks they share."""

from pyro_vae.models.conditional import (
                                         ConditionalVAE,
                                         LabelPrior,
                                         Regions,
                                         class_colour,
                                         distinct_first,
                                         draw_regions,
                                         ellipse,
                                         project_regions,
)
from pyro_vae.models.decoders import DECODERS, MLPDecoder
from pyro_vae.models.likelihoods import (
                                         LIKELIHOODS,
                                         Bernoulli,
                                         BernoulliLogits,
                                         BinNormal,
                                         DiscretizedLogistic,
                                         Gaussian,
)
from pyro_vae.models.linear_gaussian import LinearDecoder, LinearGaussian
from pyro_vae.models.networks import (
                                         ACTIVATIONS,
                                         FlatImages,
                                         GatedLinear,
                                         ResidualBlock,
                                         Upsample,
                                         conv_down,
                                         conv_up,
                                         halvings,
                                         image_chw,
                                         inverse_softplus,
                                         joined,
                                         mlp,
)
from pyro_vae.models.priors import PRIORS, FlowPrior, GaussianMixture, StandardNormal, VampPrior
from pyro_vae.models.semisupervised import M2, AuxiliaryM2, GaussianCode, StackedM2
from pyro_vae.models.vae import VAE

__all__ = [
    "ACTIVATIONS", "DECODERS", "LIKELIHOODS", "PRIORS",
    "VAE", "ConditionalVAE", "LabelPrior", "M2", "StackedM2", "AuxiliaryM2", "GaussianCode", "LinearGaussian",
    "StandardNormal", "GaussianMixture", "VampPrior", "FlowPrior",
    "Bernoulli", "BernoulliLogits", "BinNormal", "Gaussian", "DiscretizedLogistic",
    "MLPDecoder", "LinearDecoder",
    "FlatImages", "GatedLinear", "ResidualBlock", "Upsample", "conv_down", "conv_up",
    "halvings", "image_chw",
    "inverse_softplus", "joined", "mlp",
    "Regions", "class_colour", "distinct_first", "draw_regions", "ellipse", "project_regions",
]
