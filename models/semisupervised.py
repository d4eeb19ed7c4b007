"""The semi-supervised story M2 (Kingma, Rezende, Mohamed & Welling 2014): the digit is a
discrete latent, observed through the label where the label is known.

Labels arrive as the per-row field ``y`` (the story contract); a row whose label is hidden
carries :data:`pyro_vae.data.UNKNOWN_LABEL` (−1). The guide (``guides/semisupervised.py``)
proposes y from a classifier q(y | x), or puts all its mass on the known label; the
objective ``enum`` sums y exactly over its K values (no sampling). Told beside it: M1 + M2
(:class:`StackedM2`, M2 of a VAE's code) and the auxiliary deep generative model
(:class:`AuxiliaryM2`, M2 with an auxiliary latent that widens its classifier).
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.nn.functional import one_hot, softplus

from pyro_vae.models.networks import joined


class M2(nn.Module):
    """For each image n:

    .. code-block:: text

        y_n ~ Cat(1/K, …, 1/K)              the digit: known for a few images, latent otherwise
        z_n ~ N(0, I)                       the style, whatever the digit leaves open
        x_n ~ p(x | f_θ(z_n, y_n))          the decoder sees z beside y's one-hot code

    and, on labelled rows only, the classifier's auxiliary term α · log q_φ(y_n | x_n)
    (Kingma et al. 2014, eq. 9): an observed site ``y_aux`` under ``poutine.scale(α)`` and
    ``poutine.mask(known)``, so that the classifier also learns from the labels directly.
    It is masked out on unlabelled rows, hence absent from log p(x) at evaluation.

    Args:
        decoder: ``[..., latent_dim + K]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z, y) with event shape ``[D]``.
        classifier: x ``[..., D]`` → logits ``[..., K]``, shared with the guide's q(y | x).
        alpha: α, the weight of the auxiliary term (Pyro's ss-VAE example uses 46).
    """

    # The engine reads these: rows may hide their label (``y == -1``), the guide's
    # distribution at site ``y`` is the classifier whose accuracy is reported.
    partly_labelled = True
    label_site = "y"

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, classifier: nn.Module,
                 latent_dim: int, classes: int = 10, alpha: float = 46.0) -> None:
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha: the weight of the auxiliary classification term must be "
                             f">= 0, got {alpha}")
        self.decoder, self.likelihood, self.classifier = decoder, likelihood, classifier
        self.classes, self.alpha = classes, float(alpha)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("logits", torch.zeros(classes))

    def y_dist(self, n: int) -> dist.Distribution:
        """p(y): uniform over the K classes, batch ``[n]``."""
        return dist.Categorical(logits=self.logits).expand([n])

    def z_dist(self, n: int) -> dist.Distribution:
        """p(z) = N(0, I): batch ``[n]``, event ``[latent_dim]``."""
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1).expand([n])

    def x_dist(self, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(x | z, y) for z ``[..., N, d]`` and y ``[..., N]`` (enumerated values broadcast)."""
        return self.likelihood(self.decoder(joined(z, self.code(y, z.dtype))))

    def code(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """y ``[...]``'s one-hot code ``[..., K]``, in ``dtype``."""
        return one_hot(y, self.classes).to(dtype)

    def classify(self, x: Tensor) -> Tensor:
        """The classifier's logits ``[N, K]`` for images x ``[N, D]``."""
        return self.classifier(x)

    def aux_dist(self, x: Tensor) -> dist.Distribution:
        """q_φ(y | x) as the auxiliary term's density: batch ``[N]``."""
        return dist.Categorical(logits=self.classify(x))

    def forward(self, x: Tensor, y: Tensor) -> None:
        n, known = x.shape[0], y >= 0
        with pyro.plate("data", n):
            # Marked for enumeration so that a program without the guide's proposal (the
            # prior-proposal estimate, NUTS) sums y too; with the guide, y is the guide's.
            digit = pyro.sample("y", self.y_dist(n), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.z_dist(n))
            pyro.sample("x", self.x_dist(z, digit), obs=x)
            with poutine.scale(scale=self.alpha), poutine.mask(mask=known):
                pyro.sample("y_aux", self.aux_dist(x), obs=y.clamp(min=0))


class GaussianCode(nn.Module):
    """A decoder's ``[..., 2·k]`` output → N(loc, diag σ²) over a code, σ = softplus(·) +
    ``floor``: the likelihood of M1's code z1 under the stacked story's M2.

    Without ``keep`` the code has the k dimensions. With ``keep`` (k indices into a code of
    ``dim``) the output gives those dimensions and the others are N(0, 1), M1's prior: M2
    tells the story of M1's active dimensions only, as Kingma et al. fit it.
    """

    def __init__(self, floor: float = 1e-3, keep: Sequence[int] | None = None,
                 dim: int | None = None) -> None:
        super().__init__()
        self.floor, self.dim = floor, dim
        # Not in the state dict: the indices are a setting (config.json), not a weight.
        self.register_buffer("keep", None if keep is None else torch.tensor(keep),
                             persistent=False)

    def forward(self, h: Tensor) -> dist.Distribution:
        loc, raw = h.chunk(2, dim=-1)
        scale = softplus(raw) + self.floor
        if self.keep is not None:  # place the kept dimensions in a code of M1's prior
            shape = loc.shape[:-1] + (self.dim,)
            loc = loc.new_zeros(shape).index_copy(-1, self.keep, loc)
            scale = scale.new_ones(shape).index_copy(-1, self.keep, scale)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)


class StackedM2(nn.Module):
    """M1 + M2 (Kingma et al. 2014, section 3.2.3): M2 tells the story of M1's code of the
    image, and M1's decoder draws the image from the code. For each image n:

    .. code-block:: text

        y_n  ~ Cat(1/K, …, 1/K)              the digit: known for a few images
        z2_n ~ N(0, I)                       the style
        z1_n ~ N(μ_θ(z2_n, y_n), σ_θ(z2_n, y_n)²)   M1's code of the image (M2's "x")
        x_n  ~ p(x | f_θ(z1_n))              M1's decoder

    and, on labelled rows, M2's auxiliary term α · log q_φ(y_n | x_n), where the classifier
    reads the mean of M1's q(z1 | x) (shared with the guide, as M2 shares its classifier),
    or, with ``draws``, the guide's draw z1_n, as Kingma et al.'s M2 reads M1's sampled codes
    (noise on the few labelled codes; :meth:`classify` reads the mean).
    Kingma et al. fit M1 first and then M2 on M1's codes: name a fitted VAE run as
    ``m1`` and its networks are held fixed (``freeze``), so the fit is M2's alone; without
    one, M1 and M2 are fitted together.

    Args:
        m2: the M2 of the code: its decoder maps ``[..., z2 + K]`` to ``[..., 2 · z1]`` and
            its likelihood is :class:`GaussianCode`; its classifier reads ``code(x)``.
        decoder: M1's f_θ, ``[..., z1]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z1) with event shape ``[D]``.
        code: x ``[..., D]`` → the mean of M1's q(z1 | x), ``[..., z1]``.
        draws: whether the auxiliary term's classifier reads z1_n instead of ``code(x_n)``.
    """

    partly_labelled = True
    label_site = "y"

    def __init__(self, m2: M2, decoder: nn.Module, likelihood: nn.Module, code: nn.Module,
                 draws: bool = False) -> None:
        super().__init__()
        self.m2, self.decoder, self.likelihood, self.code = m2, decoder, likelihood, code
        self.classes, self.draws = m2.classes, draws

    def classify(self, x: Tensor) -> Tensor:
        """The classifier's logits ``[N, K]`` for images x ``[N, D]`` (through M1's code)."""
        return self.m2.classifier(self.code(x))

    def train_logits(self, x: Tensor) -> Tensor:
        """The logits ``[N, K]`` the fit trains the classifier on: those of a draw of M1's
        q(z1 | x) with ``draws``, else :meth:`classify`'s."""
        return self.m2.classifier(self.code.draw(x)) if self.draws else self.classify(x)

    def x_dist(self, z1: Tensor) -> dist.Distribution:
        """p(x | z1) for z1 ``[..., N, z1]``."""
        return self.likelihood(self.decoder(z1))

    def forward(self, x: Tensor, y: Tensor) -> None:
        n, known = x.shape[0], y >= 0
        with pyro.plate("data", n):
            digit = pyro.sample("y", self.m2.y_dist(n), infer={"enumerate": "parallel"})
            z2 = pyro.sample("z2", self.m2.z_dist(n))
            z1 = pyro.sample("z1", self.m2.x_dist(z2, digit))
            pyro.sample("x", self.x_dist(z1), obs=x)
            with poutine.scale(scale=self.m2.alpha), poutine.mask(mask=known):
                features = self.code.select(z1) if self.draws else self.code(x)
                pyro.sample("y_aux", self.m2.aux_dist(features), obs=y.clamp(min=0))


class AuxiliaryM2(nn.Module):
    """The auxiliary deep generative model, ADGM (Maaløe, Sønderby, Sønderby & Winther
    2016): M2 with an auxiliary latent a, drawn by the guide first, q(a | x), so that its
    classifier q(y | a, x) is a continuous mixture, q(y | x) = ∫ q(y | a, x) q(a | x) da.
    For each image n:

    .. code-block:: text

        y_n ~ Cat(1/K, …, 1/K)                  the digit: known for a few images
        z_n ~ N(0, I)                           the style
        x_n ~ p(x | f_θ(z_n, y_n))              M2's decoder
        a_n ~ N(μ_θ(x_n, z_n, y_n), σ_θ(x_n, z_n, y_n)²)   the auxiliary latent

    and, on labelled rows, α · log q_φ(y_n | a_n, x_n) with a_n the guide's draw. Integrated
    over a, the story of (x, y, z) is M2's, so log p(x) is M2's too: a adds nothing to the
    model of the images, only reach to the guide (and to the bound it gives).

    Args:
        m2: the M2 whose prior, decoder, likelihood and α this story tells; its classifier
            reads ``[x, a]`` ``[..., D + A]``.
        auxiliary: ``[..., D + z + K]`` → p(a | x, z, y), event shape ``[A]`` (e.g. an MLP
            into :class:`GaussianCode`).
        posterior: the guide's q(a | x) (``z_dist(x)`` with a mean), shared with the guide
            so that :meth:`classify` can read its mean.
    """

    partly_labelled = True
    label_site = "y"

    def __init__(self, m2: M2, auxiliary: nn.Module, posterior: nn.Module) -> None:
        super().__init__()
        self.m2, self.auxiliary, self.posterior = m2, auxiliary, posterior
        self.classes = m2.classes

    def a_dist(self, x: Tensor, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(a | x, z, y) for x ``[N, D]``, z ``[..., N, d]``, y ``[..., N]``."""
        return self.auxiliary(joined(x, z, self.m2.code(y, z.dtype)))

    def classify(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` of q(y | a, x) at the mean of q(a | x), for x ``[N, D]``."""
        return self.m2.classify(joined(x, self.posterior.z_dist(x).mean))

    def train_logits(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` at a reparametrized draw of q(a | x): what the fit trains."""
        return self.m2.classify(joined(x, self.posterior.z_dist(x).rsample()))

    def forward(self, x: Tensor, y: Tensor) -> None:
        n, known = x.shape[0], y >= 0
        with pyro.plate("data", n):
            digit = pyro.sample("y", self.m2.y_dist(n), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.m2.z_dist(n))
            pyro.sample("x", self.m2.x_dist(z, digit), obs=x)
            a = pyro.sample("a", self.a_dist(x, z, digit))
            with poutine.scale(scale=self.m2.alpha), poutine.mask(mask=known):
                pyro.sample("y_aux", self.m2.aux_dist(joined(x, a)), obs=y.clamp(min=0))
