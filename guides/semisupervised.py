"""The guides of the semi-supervised stories: M2's classifier q(y | x) and q(z | x, y), and
on them the guides of M1 + M2 and of the auxiliary deep generative model."""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot

from pyro_vae.models import joined

# A logit whose probability is exactly 0 after exp in float32 and float64 alike, yet finite,
# so that the enumerated ELBO's q · (−log q) is 0 · 1e4 = 0 and not 0 · ∞ = NaN.
IMPOSSIBLE = -1e4


class ClassifierGuide(nn.Module):
    """For each image n, inside ``pyro.plate("data", N)``:

    .. code-block:: text

        y_n ~ q_φ(y | x_n)          the classifier; a point mass on y_n where the label is known
        z_n ~ q_φ(z | x_n, y_n)     head(encoder([x_n, onehot(y_n)]))

    y is marked for parallel enumeration: under ``TraceEnum_ELBO`` (objective ``enum``) it
    takes all K values at once, each branch weighted by q(y | x), and z is drawn per branch.
    On a labelled row the point mass gives the labelled ELBO exactly (the other branches
    weigh 0); on an unlabelled row the classifier's entropy enters as M2's ELBO asks.

    Args:
        classifier: x ``[..., D]`` → logits ``[..., K]`` (shared with the story's aux term).
        encoder: ``[..., D + K]`` → features ``[..., H]`` (``out_features`` = H).
        head: features → a distribution over z (e.g. :class:`DiagonalNormalHead`).
    """

    def __init__(self, classifier: nn.Module, encoder: nn.Module, head: nn.Module,
                 classes: int) -> None:
        super().__init__()
        self.classifier, self.encoder, self.head = classifier, encoder, head
        self.classes = classes

    def y_dist(self, x: Tensor, y: Tensor) -> dist.Distribution:
        """q(y | x, label): the classifier's ``[..., N, K]`` logits for x ``[..., N, D]``
        (leading dimensions: e.g. the particles of a vectorized estimate, when x holds a
        drawn latent), replaced by a point mass on the rows where ``y`` ``[N]`` holds a
        known label (``>= 0``)."""
        logits = self.classifier(x)
        label = y.clamp(min=0).expand(logits.shape[:-1])[..., None]
        point = torch.full_like(logits, IMPOSSIBLE).scatter(-1, label, 0.0)
        return dist.Categorical(logits=torch.where((y >= 0)[..., None], point, logits))

    def z_dist(self, x: Tensor, y: Tensor) -> dist.Distribution:
        """q(z | x, y) for x ``[..., N, D]`` and y ``[..., N]`` (enumerated values and
        particles broadcast)."""
        return self.head(self.encoder(joined(x, one_hot(y, self.classes).to(x.dtype))))

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            digit = pyro.sample("y", self.y_dist(x, y), infer={"enumerate": "parallel"})
            pyro.sample("z", self.z_dist(x, digit))


class Classifier(nn.Module):
    """An encoder body followed by a linear map to K logits: x ``[..., D]`` → ``[..., K]``."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.logits = nn.Linear(encoder.out_features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.encoder(x))


class MeanCode(nn.Module):
    """The mean of an amortized q(z | x): x ``[..., D]`` → ``[..., k]``, deterministic. The
    stacked story's classifier reads it (the head must have a closed-form mean). ``keep``
    names the k of z's d dimensions that M2 reads (all of them when ``None``)."""

    def __init__(self, guide: nn.Module, keep: Sequence[int] | None = None) -> None:
        super().__init__()
        self.guide = guide
        # Not in the state dict: the indices are a setting (config.json), not a weight.
        self.register_buffer("keep", None if keep is None else torch.tensor(keep),
                             persistent=False)

    def select(self, z: Tensor) -> Tensor:
        """The kept dimensions of codes z ``[..., d]``: ``[..., k]``."""
        return z if self.keep is None else z.index_select(-1, self.keep)

    def forward(self, x: Tensor) -> Tensor:
        return self.select(self.guide.z_dist(x).mean)

    def draw(self, x: Tensor) -> Tensor:
        """A reparametrized draw of q(z | x), its kept dimensions: ``[..., k]``."""
        return self.select(self.guide.z_dist(x).rsample())


class StackedGuide(nn.Module):
    """The guide of M1 + M2 (:class:`pyro_vae.models.StackedM2`), for each image n:

    .. code-block:: text

        z1_n ~ q_φ(z1 | x_n)                 M1's guide
        y_n  ~ q_φ(y | code(x_n))            M2's classifier on the mean of q(z1 | x_n)
        z2_n ~ q_φ(z2 | z1_n, y_n)           M2's q(z | x, y), on the drawn code

    y is enumerated as in :class:`ClassifierGuide`, whose parts this guide reuses. With
    ``draws`` the classifier reads z1_n instead (q(y | z1_n): M2 of the drawn code, as
    Kingma et al. fit it).

    Args:
        m1: an amortized guide with ``z_dist(x)`` (M1's q(z1 | x)).
        m2: M2's guide, reading codes ``[..., z1]`` in place of images.
        code: x → the mean of ``m1``'s q(z1 | x) (shared with the story's auxiliary term).
        draws: whether the classifier reads z1_n instead of ``code(x_n)``.
    """

    def __init__(self, m1: nn.Module, m2: ClassifierGuide, code: nn.Module,
                 draws: bool = False) -> None:
        super().__init__()
        self.m1, self.m2, self.code, self.draws = m1, m2, code, draws

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.m1.z_dist(x))
            code = self.code.select(z1)  # what M2 reads of the drawn code
            digit = pyro.sample("y", self.m2.y_dist(code if self.draws else self.code(x), y),
                                infer={"enumerate": "parallel"})
            pyro.sample("z2", self.m2.z_dist(code, digit))


class AuxiliaryGuide(nn.Module):
    """The guide of the auxiliary deep generative model
    (:class:`pyro_vae.models.AuxiliaryM2`), for each image n:

    .. code-block:: text

        a_n ~ q_φ(a | x_n)                    drawn first
        y_n ~ q_φ(y | a_n, x_n)               M2's classifier on [x_n, a_n]
        z_n ~ q_φ(z | a_n, y_n, x_n)          M2's q(z | x, y) on [x_n, a_n]

    y is enumerated as in :class:`ClassifierGuide`, whose parts read ``[x, a]`` in place of
    x. The engine's q(y | x) is then the mean of q(y | a, x) over 8 draws of a (its
    ``LABEL_DRAWS``): the mixture, estimated.

    Args:
        posterior: an amortized guide with ``z_dist(x)``: q(a | x), shared with the story.
        m2: M2's guide, its classifier and encoder reading ``[..., D + A]``.
    """

    def __init__(self, posterior: nn.Module, m2: ClassifierGuide) -> None:
        super().__init__()
        self.posterior, self.m2 = posterior, m2

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", self.posterior.z_dist(x))
            features = joined(x, a)
            digit = pyro.sample("y", self.m2.y_dist(features, y), infer={"enumerate": "parallel"})
            pyro.sample("z", self.m2.z_dist(features, digit))
