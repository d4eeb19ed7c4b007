"""The generative side: stories, priors, likelihoods, decoders."""

from pyro_vae.models.decoders import DECODERS, MLPDecoder
from pyro_vae.models.linear_gaussian import LinearDecoder, LinearGaussian
from pyro_vae.models.likelihoods import LIKELIHOODS, Bernoulli, Gaussian
from pyro_vae.models.networks import ACTIVATIONS, mlp
from pyro_vae.models.priors import PRIORS, FlowPrior, GaussianMixture, StandardNormal, VampPrior
from pyro_vae.models.vae import VAE

__all__ = ["ACTIVATIONS", "DECODERS", "LIKELIHOODS", "PRIORS", "VAE", "Bernoulli", "FlowPrior",
           "Gaussian", "GaussianMixture", "VampPrior",
           "LinearDecoder", "LinearGaussian",
           "MLPDecoder", "StandardNormal", "mlp"]
