"""Priors p(z). Each is a module whose call returns a distribution with
``batch_shape == []`` and ``event_shape == [latent_dim]``, so that it broadcasts
over the data plate (and over a particle plate when one is added).

Builders have the signature ``PRIORS[name](cfg, options, data_dim, guide)``, where
``options`` is the part's own settings (the dataclass registered with it). A prior that
cannot work with the given guide refuses it here, in its builder, with a
sentence saying why; the refusal happens when the model is built, before any
training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import inverse_softplus
from pyro_vae.registry import Registry

PRIORS: Registry = Registry("prior")

# Coupling networks of the flow prior: small, since they map latent_dim to latent_dim.
FLOW_PRIOR_HIDDEN = (64, 64)
# The rational-quadratic splines act on [-bound, bound] and are the identity outside.
FLOW_PRIOR_BOUND = 5.0


class StandardNormal(nn.Module):
    """z ~ N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers follow the module to its device.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class GaussianMixture(nn.Module):
    """z ~ Σ_k π_k N(μ_k, diag σ_k²), with π = softmax(logits), σ = softplus(·) + floor.

    Weights, means and scales are all learned with the rest of the model. The
    means start spread as N(0, I) draws so that components do not coincide.
    """

    def __init__(self, latent_dim: int, components: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.floor = floor
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((components, latent_dim),
                                                  inverse_softplus(1.0 - floor)))

    def scales(self) -> torch.Tensor:
        """σ_k, shape ``[K, latent_dim]``."""
        return softplus(self.raw_scales) + self.floor

    def forward(self) -> dist.Distribution:
        parts = dist.Normal(self.locs, self.scales(), validate_args=False).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits, validate_args=False),
                                      parts, validate_args=False)


class VampPrior(nn.Module):
    """z ~ (1/K) Σ_k q_φ(z | u_k): the guide's posteriors at K learned pseudo-inputs u_k
    (Tomczak & Welling, 2018).

    The pseudo-inputs are ``sigmoid(raw)``, so they stay in the pixel range [0, 1].
    The guide is held by reference, not as a submodule: its parameters belong
    to the guide (checkpointed once, optimized once), and the prior's gradient
    still reaches them through ``guide.z_dist``.
    """

    def __init__(self, guide: nn.Module, data_dim: int, components: int) -> None:
        super().__init__()
        self.raw_inputs = nn.Parameter(0.5 * torch.randn(components, data_dim))
        self.register_buffer("logits", torch.zeros(components))
        object.__setattr__(self, "guide", guide)  # bypasses submodule registration

    def pseudo_inputs(self) -> torch.Tensor:
        """u_k, shape ``[K, data_dim]`` in [0, 1]."""
        return torch.sigmoid(self.raw_inputs)

    def forward(self) -> dist.Distribution:
        parts = self.guide.z_dist(self.pseudo_inputs())  # batch [K], event [latent_dim]
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits, validate_args=False),
                                      parts, validate_args=False)


class FlowPrior(nn.Module):
    """z = f_L ∘ … ∘ f_1(ε), ε ~ N(0, I): a learned normalizing flow from Pyro's transforms.

    With ``latent_dim >= 2`` each f_l is a rational-quadratic spline coupling
    layer, and the coordinates are reversed between layers so that every
    coordinate gets transformed. With ``latent_dim == 1`` each f_l is an
    elementwise spline. log p(z) inverts the splines exactly.
    """

    def __init__(self, latent_dim: int, layers: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))
        self.layers = nn.ModuleList([self._layer(latent_dim) for _ in range(layers)])

    @staticmethod
    def _layer(latent_dim: int) -> T.TransformModule:
        if latent_dim == 1:
            layer = T.Spline(1, count_bins=8, bound=FLOW_PRIOR_BOUND)
        else:
            layer = T.spline_coupling(latent_dim, hidden_dims=list(FLOW_PRIOR_HIDDEN),
                                      count_bins=8, bound=FLOW_PRIOR_BOUND)
        # Pyro's random spline parameters start the density with sharp spikes;
        # near-zero ones give equal bins, a smooth map and a prior close to N(0, I).
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if "unnormalized" in name:
                    p.zero_()
            hyper = getattr(getattr(layer, "upper_spline", None), "nn", None)
            if hyper is not None:  # small, not zero, so the hidden layers still get gradient
                hyper.layers[-1].weight.mul_(0.01)
                hyper.layers[-1].bias.zero_()
        return layer

    def forward(self) -> dist.Distribution:
        transforms: list = []
        for i, layer in enumerate(self.layers):
            if i > 0 and self.latent_dim > 1:
                transforms.append(T.Permute(self.reverse))
            transforms.append(layer)
        base = dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, transforms, validate_args=False)


@PRIORS.register("normal")
def standard_normal(cfg: ModelConfig, opts: object, data_dim: int, guide: nn.Module) -> nn.Module:
    return StandardNormal(cfg.latent_dim)


@dataclass(frozen=True)
class MixtureOptions:
    """Settings of the ``mixture`` prior."""

    components: int = field(default=10, metadata={
        "help": "number of Gaussian components", "parse": "positive_int", "alias": "components"})
    scale_floor: float = field(default=1e-3, metadata={
        "help": "each component's σ is softplus(·) plus this", "parse": "positive_float"})


@PRIORS.register("mixture", options=MixtureOptions)
def gaussian_mixture(cfg: ModelConfig, opts: MixtureOptions, data_dim: int,
                     guide: nn.Module) -> nn.Module:
    """A mixture of ``opts.components`` diagonal Gaussians, all of it learned."""
    return GaussianMixture(cfg.latent_dim, opts.components, opts.scale_floor)


@dataclass(frozen=True)
class VampOptions:
    """Settings of the ``vamp`` prior."""

    components: int = field(default=10, metadata={
        "help": "number of learned pseudo-inputs", "parse": "positive_int", "alias": "components"})


@PRIORS.register("vamp", options=VampOptions)
def vamp_prior(cfg: ModelConfig, opts: VampOptions, data_dim: int, guide: nn.Module) -> nn.Module:
    """The VampPrior with ``opts.components`` pseudo-inputs; the guide must score any z."""
    if not getattr(guide, "scores_any_z", False):
        raise ValueError(
            f"the vamp prior cannot be used with the {cfg.guide!r} guide: the VampPrior scores "
            f"every z under the guide's posterior at each pseudo-input, and this guide's q(z | x) "
            f"has no density in closed form for points it did not sample itself; choose a "
            f"diagonal or full-rank guide")
    return VampPrior(guide, data_dim, opts.components)


@dataclass(frozen=True)
class FlowOptions:
    """Settings of the ``flow`` prior."""

    layers: int = field(default=2, metadata={
        "help": "spline (coupling) layers", "parse": "positive_int", "alias": "flow_layers"})


@PRIORS.register("flow", options=FlowOptions)
def flow_prior(cfg: ModelConfig, opts: FlowOptions, data_dim: int, guide: nn.Module) -> nn.Module:
    """N(0, I) pushed through ``opts.layers`` spline (coupling) layers."""
    return FlowPrior(cfg.latent_dim, opts.layers)
