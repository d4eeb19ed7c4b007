"""Likelihoods p(x | f_θ(z)): each turns a decoder output ``[..., D]`` into a
distribution with event shape ``[D]``. Densities are normalized, in nats, so
numbers compare across likelihoods (for continuous x they are densities).

Which pixels a likelihood can score is its distribution's ``support``: {0, 1} for
the Bernoulli, [0, 1] for the continuous Bernoulli, the 8-bit grid k/255 for the
discretized logistic, ℝ for the Gaussians. Data that does not fit is refused before
training (:mod:`pyro_vae.data` reads the support from the story's trace)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all
from torch.nn.functional import logsigmoid, softplus

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import inverse_softplus
from pyro_vae.pixels import LEVELS, eight_bit
from pyro_vae.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


class Bernoulli(nn.Module):
    """x_d ~ Bernoulli(sigmoid(f_d(z))); needs x in {0, 1} (under ``--binarize grey`` it scores
    grey levels by their cross-entropy, which is not a log-likelihood of them)."""

    def forward(self, logits: Tensor) -> dist.Distribution:
        return BernoulliLogits(logits=logits, validate_args=False).to_event(1)


class BernoulliLogits(dist.Bernoulli):
    """Bernoulli(σ(l)) scored as log σ(l) − (1 − x)·l, which is x·log σ(l) + (1 − x)·log σ(−l)
    for every x (as torch's form is). Torch computes it through
    ``binary_cross_entropy_with_logits``, which makes 1 − x at the size of the logits:
    when x ``[N, D]`` meets logits ``[K, N, D]`` (importance sampling), that is two extra
    passes over the large tensor: its log-density takes 18.9 ms on this 2-core CPU for
    K = 512, N = 8, D = 784 (one thread), this one 14.3 ms."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # One fused pass for the product and the difference (addcmul), which also broadcasts
        # a value larger than the logits.
        return torch.addcmul(logsigmoid(self.logits), 1 - value, self.logits, value=-1)


class Gaussian(nn.Module):
    """x_d ~ N(f_d(z), σ_d²) with σ fixed, one learned σ, or one learned σ per pixel.

    A learned σ is ``softplus(raw) + floor``: positive, and bounded away from 0
    so that constant pixels cannot drive the density to infinity.
    """

    def __init__(self, data_dim: int, sigma: float, learn: str, floor: float,
                 levels: int = 1) -> None:
        super().__init__()
        self.log_levels = math.log(levels)
        if learn not in ("fixed", "global", "pixel"):
            raise ValueError(f"learn must be 'fixed', 'global' or 'pixel', got {learn!r}")
        self.learn = learn
        self.floor = floor if learn != "fixed" else 0.0
        size = {"fixed": 1, "global": 1, "pixel": data_dim}[learn]
        raw = torch.full((size,), inverse_softplus(max(sigma - self.floor, 1e-6)))
        if learn == "fixed":
            self.register_buffer("raw_sigma", raw)
        else:
            self.raw_sigma = nn.Parameter(raw)

    def sigma(self) -> Tensor:
        """Scale, shape ``[1]`` or ``[D]``."""
        return softplus(self.raw_sigma) + self.floor

    def forward(self, mean: Tensor) -> dist.Distribution:
        if self.log_levels:
            return BinNormal(mean, self.sigma(), self.log_levels, validate_args=False).to_event(1)
        return dist.Normal(mean, self.sigma(), validate_args=False).to_event(1)


class BinNormal(dist.Normal):
    """N(μ, σ²) scored as the density of y = L·x, the pixel on the scale of its L levels:
    log p(x) − log L per pixel. On dequantized pixels x = (k + u)/L, u ~ U[0, 1), its mean
    over u is a lower bound on log P(k), so bits per dimension compare with a discrete
    likelihood's (Theis et al. 2016; Ho et al. 2019)."""

    def __init__(self, loc: Tensor, scale: Tensor, log_levels: float,
                 validate_args: bool | None = None) -> None:
        super().__init__(loc, scale, validate_args=validate_args)
        self.log_levels = log_levels

    def expand(self, batch_shape, _instance=None) -> "BinNormal":
        new = self._get_checked_instance(BinNormal, _instance)
        new.log_levels = self.log_levels
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value) - self.log_levels


@LIKELIHOODS.register("bernoulli")
def bernoulli(cfg: ModelConfig, opts: object, data_dim: int) -> nn.Module:
    return Bernoulli()


def _sigma(help_text: str) -> float:
    return field(default=0.1, metadata={"help": help_text, "parse": "positive_float",
                                        "alias": "sigma"})


def _floor() -> float:
    return field(default=0.01, metadata={"help": "a learned σ never falls below this",
                                         "parse": "positive_float", "alias": "sigma_floor"})


def _levels() -> int:
    return field(default=1, metadata={
        "help": "score x as the density of the pixel on the scale of this many levels (log p "
                "minus D·log levels): 256 with --binarize dequantize gives 8-bit bits/dim "
                "comparable with discretized-logistic", "parse": "positive_int",
        "alias": "levels"})


@dataclass(frozen=True)
class LearnedSigmaOptions:
    """Settings of the Gaussian likelihoods whose σ is learned."""

    sigma: float = _sigma("starting σ")
    floor: float = _floor()
    levels: int = _levels()


@dataclass(frozen=True)
class FixedSigmaOptions:
    """Settings of the Gaussian likelihood with a fixed σ."""

    sigma: float = _sigma("the fixed σ")
    levels: int = _levels()


@LIKELIHOODS.register("gaussian", options=LearnedSigmaOptions)
def gaussian_global(cfg: ModelConfig, opts: LearnedSigmaOptions, data_dim: int) -> nn.Module:
    """One learned σ shared by every pixel, starting at ``opts.sigma``."""
    return Gaussian(data_dim, opts.sigma, "global", opts.floor, opts.levels)


@LIKELIHOODS.register("gaussian-fixed", options=FixedSigmaOptions)
def gaussian_fixed(cfg: ModelConfig, opts: FixedSigmaOptions, data_dim: int) -> nn.Module:
    return Gaussian(data_dim, opts.sigma, "fixed", 0.0, opts.levels)


@LIKELIHOODS.register("gaussian-pixel", options=LearnedSigmaOptions)
def gaussian_pixel(cfg: ModelConfig, opts: LearnedSigmaOptions, data_dim: int) -> nn.Module:
    """One learned σ per pixel, each starting at ``opts.sigma``."""
    return Gaussian(data_dim, opts.sigma, "pixel", opts.floor, opts.levels)


# ---------------------------------------------------------------- grey levels and 8-bit pixels


class ContinuousBernoulli(nn.Module):
    """x_d ~ CB(sigmoid(f_d(z))) on [0, 1]: the Bernoulli made a normalized density for grey
    levels (Loaiza-Ganem & Cunningham 2019). Its mean is not λ; figures show the mean."""

    def forward(self, logits: Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(1)


@LIKELIHOODS.register("continuous-bernoulli")
def continuous_bernoulli(cfg: ModelConfig, opts: object, data_dim: int) -> nn.Module:
    return ContinuousBernoulli()


class DiscretizedLogistic(dist.TorchDistribution):
    """A logistic(μ, s) on [0, 1] read off in 256 bins of width 1/255 centred on the 8-bit
    pixels k/255; the bins at 0 and 255 take the tails (Kingma et al. 2016; Salimans et al.
    2017). P(k) = σ(b⁺) − σ(b⁻), b^± = (k/255 ± 1/510 − μ)/s, computed as
    log σ(b⁺) + log σ(−b⁻) + log(1 − e^{−1/(255 s)}), which never subtracts two close numbers."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = eight_bit

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "DiscretizedLogistic":
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        half = 0.5 / (LEVELS - 1)
        upper = (value + half - self.loc) / self.scale
        lower = (value - half - self.loc) / self.scale
        inner = logsigmoid(upper) + logsigmoid(-lower) + torch.log(-torch.expm1(-2 * half / self.scale))
        return torch.where(value < half, logsigmoid(upper),
                           torch.where(value > 1 - half, logsigmoid(-lower), inner))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(1e-6, 1 - 1e-6)  # logit(u) stays finite
            y = self.loc.expand(shape) + self.scale.expand(shape) * (u.log() - (-u).log1p())
            return (y * (LEVELS - 1)).round().clamp(0, LEVELS - 1) / (LEVELS - 1)

    MEAN_EDGES = 32
    """Bin edges summed at once by :attr:`mean`: the memory of 32 image batches, not 255,
    and a short program for ``torch.export`` and ONNX (8 steps, not 255)."""

    @property
    def mean(self) -> Tensor:
        """Σ_k k/255 P(k) = 1/255 Σ_{j=1}^{255} P(k ≥ j), :attr:`MEAN_EDGES` bin edges at a
        time."""
        # The edges in double precision, then rounded once, as Python floats would be.
        edges = ((torch.arange(1, LEVELS, dtype=torch.float64) - 0.5) / (LEVELS - 1)).to(
            device=self.loc.device, dtype=self.loc.dtype)
        loc, scale = self.loc.unsqueeze(-1), self.scale.unsqueeze(-1)
        total = torch.zeros_like(self.loc)
        for chunk in edges.split(self.MEAN_EDGES):
            total = total + torch.sigmoid((loc - chunk) / scale).sum(-1)
        return total / (LEVELS - 1)


class DiscretizedLogisticLikelihood(nn.Module):
    """x_d ~ DiscretizedLogistic(f_d(z), s_d): the decoder gives the location of every pixel
    of every channel; the scale s_d = softplus(raw_d) + floor is learned per pixel and
    channel (not a function of z)."""

    def __init__(self, data_dim: int, scale: float, floor: float) -> None:
        super().__init__()
        self.floor = floor
        self.raw_scale = nn.Parameter(torch.full((data_dim,), inverse_softplus(scale - floor)))

    def scale(self) -> Tensor:
        """Scale, shape ``[D]``."""
        return softplus(self.raw_scale) + self.floor

    def forward(self, loc: Tensor) -> dist.Distribution:
        return DiscretizedLogistic(loc, self.scale(), validate_args=False).to_event(1)


@dataclass(frozen=True)
class DiscretizedLogisticOptions:
    """Settings of the ``discretized-logistic`` likelihood."""

    scale: float = field(default=0.05, metadata={
        "help": "starting logistic scale (pixels in [0, 1])", "parse": "positive_float"})
    floor: float = field(default=1e-4, metadata={
        "help": "the learned scale never falls below this (a bin is 1/255 wide)",
        "parse": "positive_float"})


@LIKELIHOODS.register("discretized-logistic", options=DiscretizedLogisticOptions)
def discretized_logistic(cfg: ModelConfig, opts: DiscretizedLogisticOptions,
                         data_dim: int) -> nn.Module:
    """8-bit pixels k/255; log p(x) is a log-probability, so bits/dim is the standard figure."""
    return DiscretizedLogisticLikelihood(data_dim, opts.scale, opts.floor)
