"""Stories in which the digit's label is part of the generative process (labels ``y``
arrive as a per-row keyword, as the story contract says).

Both take the built-in parts as values: a decoder (z, or z beside the label's one-hot
code, to the likelihood's parameters) and a likelihood. Each draws a picture of its own
into the run folder (``figures``): the learned prior regions per class, and style transfer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot, softplus

from pyro_vae.models.networks import inverse_softplus
from pyro_vae.programs import Batch


class LabelPrior(nn.Module):
    """One region of latent space per class, for each image n with label y_n:

    .. code-block:: text

        z_n ~ N(μ_{y_n}, diag σ_{y_n}²)     μ_k, σ_k learned for each of K classes
        x_n ~ p(x | f_θ(z_n))

    "One distribution per digit", made literal; the likelihood scores log p(x | y).

    Args:
        decoder: ``[..., latent_dim]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z) with event shape ``[D]``.
        classes: K; labels must lie in 0..K−1.
    """

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, latent_dim: int,
                 classes: int = 10, floor: float = 1e-3) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood
        self.classes, self.floor = classes, floor
        # Means start spread like N(0, I) draws so that the classes begin apart.
        self.locs = nn.Parameter(torch.randn(classes, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((classes, latent_dim),
                                                  inverse_softplus(1.0 - floor)))

    def scales(self) -> Tensor:
        """σ_k of every class, ``[K, latent_dim]``."""
        return softplus(self.raw_scales) + self.floor

    def z_dist(self, y: Tensor) -> dist.Distribution:
        """p(z | y) for labels ``y`` ``[N]``: batch ``[N]``, event ``[latent_dim]``."""
        scale = softplus(self.raw_scales[y]) + self.floor
        return dist.Normal(self.locs[y], scale, validate_args=False).to_event(1)

    def x_dist(self, z: Tensor) -> dist.Distribution:
        return self.likelihood(self.decoder(z))

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist(y))
            pyro.sample("x", self.x_dist(z), obs=x)

    @torch.no_grad()
    def regions(self, guide: nn.Module, x: Tensor, batch: Batch, n: int = 2000) -> Regions:
        """E_q[z | x] of up to ``n`` images ``x`` ``[N, D]`` (labels ``batch["y"]`` ``[N]``)
        and the K learned priors N(μ_k, diag σ_k²), in the plane of
        :func:`pyro_vae.figures.principal_plane`."""
        from pyro_vae.predictive import mean_latents

        x, rows = x[:n], {k: v[:n] for k, v in batch.items()}
        z = mean_latents(guide, x, rows)["z"].reshape(len(x), -1)
        return project_regions(z, rows["y"], self.locs, self.scales() ** 2)

    def figures(self, guide: nn.Module, x: Tensor, batch: Batch, image_shape: Sequence[int],
                folder: Path) -> list[Path]:
        """``label_prior_regions.png``: the K learned prior regions (1σ and 2σ ellipses, the
        digit at μ_k) over the encoded test images ``x`` ``[N, D]`` coloured by label (above
        2-D: both projected onto the first two principal components of the encoded points)."""
        from matplotlib.figure import Figure

        from pyro_vae.figures import save_figure

        fig = Figure(figsize=(7, 6.5))
        draw_regions(fig.add_subplot(), self.regions(guide, x, batch))
        path = Path(folder) / "label_prior_regions.png"
        save_figure(fig, path)
        return [path]


class ConditionalVAE(nn.Module):
    """The conditional VAE, for each image n with label y_n:

    .. code-block:: text

        z_n ~ N(0, I)                       style, whatever the label leaves open
        x_n ~ p(x | f_θ(z_n, y_n))          the decoder sees z beside y's one-hot code

    Args:
        decoder: ``[..., latent_dim + K]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z, y) with event shape ``[D]``.
    """

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, latent_dim: int,
                 classes: int = 10) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood
        self.classes = classes
        self.register_buffer("loc", torch.zeros(latent_dim))

    def z_dist(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1)

    def x_dist(self, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(x | z, y) for z ``[..., N, d]`` and labels ``[N]``."""
        code = one_hot(y, self.classes).to(z.dtype).expand(z.shape[:-1] + (self.classes,))
        return self.likelihood(self.decoder(torch.cat([z, code], dim=-1)))

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist().expand([x.shape[0]]))
            pyro.sample("x", self.x_dist(z, y), obs=x)

    @torch.no_grad()
    def figures(self, guide: nn.Module, x: Tensor, batch: Batch, image_shape: Sequence[int],
                folder: Path, rows: int = 8) -> list[Path]:
        """``style_transfer.png``: for ``rows`` test images (distinct labels first), the
        image itself, then the image mean of p(x | z, y) for y = 0..K−1 with z held at
        E_q[z | x, y]: what z keeps (slant, width, stroke) once the digit is given."""
        from pyro_vae.figures import save_grid
        from pyro_vae.predictive import mean_latents

        pick = distinct_first(batch["y"], rows)
        source, y = x[pick], batch["y"][pick]
        z = mean_latents(guide, source, {"y": y})["z"]                     # [R, d]
        grid = self.style_grid(z)                                          # [R, K, D]
        cells = torch.cat([source.reshape(len(pick), 1, -1), grid], dim=1)  # [R, 1 + K, D]
        path = Path(folder) / "style_transfer.png"
        save_grid(cells.reshape(-1, cells.shape[-1]), image_shape, path, ncol=self.classes + 1,
                  title=f"style transfer: test image | p(x | z, y) means, y = 0..{self.classes - 1} "
                        f"(z = E_q[z | x, y], one per row)")
        return [path]

    @torch.no_grad()
    def style_grid(self, z: Tensor) -> Tensor:
        """The image mean of p(x | z_r, y = k) for every row r of ``z`` ``[R, d]`` and every
        class k: ``[R, K, D]``."""
        k = self.classes
        labels = torch.arange(k, device=z.device).repeat(len(z))  # [R·K]: 0..K−1 per row
        means = self.x_dist(z.repeat_interleave(k, dim=0), labels).mean
        return means.reshape(len(z), k, -1)


# ---------------------------------------------------------------- helpers of the figures

def distinct_first(y: Tensor, n: int) -> Tensor:
    """Indices of ``n`` rows of labels ``y`` ``[N]``: the first row of each label in order of
    appearance, then the earliest rows not yet taken (fewer if N < n)."""
    seen: dict[int, int] = {}
    for i, label in enumerate(y.tolist()):
        seen.setdefault(int(label), i)
    first = list(seen.values())[:n]
    taken = set(first)
    rest = [i for i in range(len(y)) if i not in taken]
    return torch.tensor(sorted(first) + rest[:n - len(first)], dtype=torch.long, device=y.device)


class Regions(NamedTuple):
    """Encoded points and Gaussian regions, projected onto a plane for drawing."""

    points: np.ndarray   # [N, 2]
    labels: np.ndarray   # [N]
    locs: np.ndarray     # [R, 2]  each region's mean
    covs: np.ndarray     # [R, 2, 2]  each region's covariance
    dim: int             # the latent dimension the plane was taken from


def project_regions(z: Tensor, labels: Tensor, locs: Tensor, variances: Tensor) -> Regions:
    """Points z ``[N, d]`` with ``labels`` ``[N]``, and regions N(locs_r, diag variances_r)
    (``[R, d]`` each), in the plane of :func:`pyro_vae.figures.principal_plane` of z."""
    from pyro_vae.figures import principal_plane

    z = z.detach().double().cpu().numpy()
    center, axes = principal_plane(z)
    mu = (locs.detach().double().cpu().numpy() - center) @ axes
    var = variances.detach().double().cpu().numpy()
    covs = np.einsum("di,rd,dj->rij", axes, var, axes)  # Vᵀ diag(σ_r²) V: the projected covariance
    return Regions((z - center) @ axes, labels.cpu().numpy(), mu, covs, z.shape[1])


def ellipse(cov: np.ndarray, radius: float) -> tuple[float, float, float]:
    """Width, height and angle (degrees) of the ``radius``-σ ellipse of a 2×2 covariance."""
    values, vectors = np.linalg.eigh(cov)  # ascending
    major = vectors[:, 1]
    return (2 * radius * math.sqrt(max(values[1], 0.0)), 2 * radius * math.sqrt(max(values[0], 0.0)),
            math.degrees(math.atan2(major[1], major[0])))


def _regions_title(n: int, d: int) -> str:
    where = "z" if d <= 2 else f"first two principal components of the encoded points (d = {d})"
    return (f"learned prior regions N(μ_k, σ_k²), 1σ and 2σ, over E_q[z | x] of {n} test "
            f"images\n(axes: {where})")


def class_colour(k: int, classes: int) -> tuple:
    """The colour of class k, the same in every figure (tab10, or tab20 above 10 classes)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if classes <= 10 else "tab20"]
    return cmap(k % cmap.N)


def draw_regions(ax, regions: Regions, marks: Sequence[str] | None = None,
                 title: str | None = None) -> None:
    """Scatter the points coloured by label on the matplotlib ``ax``; draw each region as its
    1σ and 2σ ellipses, in class r's colour marked r, or, given ``marks``, in black marked
    ``marks[r]`` (e.g. one shared prior)."""
    from matplotlib.patches import Ellipse

    classes = max(len(regions.locs) if marks is None else 0, int(regions.labels.max(initial=0)) + 1)
    ax.scatter(regions.points[:, 0], regions.points[:, 1], s=9, alpha=0.6, linewidths=0,
               c=[class_colour(int(k), classes) for k in regions.labels])
    for r, (loc, cov) in enumerate(zip(regions.locs, regions.covs)):
        colour = class_colour(r, classes) if marks is None else "black"
        for radius, style in ((1.0, "-"), (2.0, "--")):
            w, h, angle = ellipse(cov, radius)
            ax.add_patch(Ellipse(tuple(loc), w, h, angle=angle, fill=False, ec=colour, lw=1.6, ls=style))
        ax.text(loc[0], loc[1], str(r) if marks is None else marks[r], ha="center", va="center",
                fontsize=11, fontweight="bold", color=colour,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, alpha=0.9))
    names = ("z[0]", "z[1]") if regions.dim <= 2 else ("principal component 1", "principal component 2")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or _regions_title(len(regions.points), regions.dim), fontsize=9)
    ax.autoscale_view()
