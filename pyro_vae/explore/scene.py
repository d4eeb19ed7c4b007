"""What the explorer's panels show, computed once in PyTorch: the plane through z-space the
page draws, the visible window of it, the prior's density there, and each test image's
q(z | x) on it.

.. code-block:: text

    plane     z = c + A u, u ∈ ℝ²: the latent space itself for a 2-D site, else the plane of
              latent_map.png (the test codes' mean, their first two principal axes)
    window    a square of u holding every test code and the prior's central 99 %
    prior     p(u) on a grid of the window, exact where the story allows, else estimated
              from prior draws; contours at the regions of highest density holding 50, 90, 99 %
    q         E_q and Cov_q of each test image's code, restricted to the plane (a slice)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from pyro_vae.figures import principal_plane
from pyro_vae.predictive import mean_latents
from pyro_vae.programs import Batch
from pyro_vae.traces import index_rows, is_latent, trace_program

MASSES = (0.5, 0.9, 0.99)
"""The prior's highest-density regions the contours enclose."""


@dataclass(frozen=True)
class Plane:
    """z = ``center`` + ``axes`` u: ``center`` ``[d]``, orthonormal ``axes`` ``[d, 2]``
    (``[1, 2]`` for d = 1, whose second coordinate carries no value of z)."""

    center: np.ndarray
    axes: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.center)

    def lift(self, u: np.ndarray) -> np.ndarray:
        """Plane points ``[M, 2]`` → z ``[M, d]``."""
        return self.center + u @ self.axes.T

    def project(self, z: np.ndarray) -> np.ndarray:
        """z ``[M, d]`` → plane coordinates ``[M, 2]`` (orthogonal projection)."""
        return (z - self.center) @ self.axes


@dataclass(frozen=True)
class Window:
    """The visible square of the plane, ``[x0, x1] × [y0, y1]``."""

    x0: float
    x1: float
    y0: float
    y1: float

    def grid(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` node coordinates per axis (x, y increasing) and the nodes ``[n·n, 2]``,
        row-major with y as the row (node (i, j) is at (x_j, y_i))."""
        xs, ys = np.linspace(self.x0, self.x1, n), np.linspace(self.y0, self.y1, n)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        return xs, ys, np.stack([gx.ravel(), gy.ravel()], axis=1)


def square_window(*clouds: np.ndarray, pad: float = 0.08) -> Window:
    """The smallest square holding every point of ``clouds`` (``[M, 2]`` each), widened by
    ``pad`` of its side on every edge (equal scales on both axes: q's ellipses keep their shape)."""
    pts = np.concatenate([c for c in clouds if len(c)], axis=0)
    lo, hi = pts.min(0), pts.max(0)
    mid, side = (lo + hi) / 2, max(float((hi - lo).max()), 1e-3) * (1 + 2 * pad)
    return Window(mid[0] - side / 2, mid[0] + side / 2, mid[1] - side / 2, mid[1] + side / 2)


def codes_and_plane(guide, site: str, x: Tensor, fields: Batch) -> tuple[np.ndarray, Plane]:
    """E_q[z_site | x] of the images ``x`` ``[N, D]`` (``[N, d]``) and their plane, the one
    :func:`pyro_vae.figures.latent_map` draws them in."""
    z = mean_latents(guide, x, fields)[site].reshape(len(x), -1).double().cpu().numpy()
    return z, Plane(*principal_plane(z))


def rows_of(x: Tensor, fields: Batch, n: int) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` rows cycling through ``x`` and its per-row fields (shapes for the story's plate)."""
    index = torch.arange(n, device=x.device) % len(x)
    return x[index], index_rows(dict(fields), index)


def reads_fields(program, fields: Batch) -> bool:
    """Whether the program is given any of the per-row ``fields`` (``y``) when run."""
    accepts = getattr(program, "accepts", None)
    return bool(fields) and (accepts is None or bool(set(fields) & set(accepts)))


def _first_latent(trace) -> str | None:
    return next((name for name, s in trace.nodes.items() if is_latent(s)), None)


def _gaussian(fn) -> tuple[Tensor, Tensor] | None:
    """Mean ``[..., d]`` and covariance ``[..., d, d]`` of a Gaussian site distribution
    (diagonal or full); ``None`` for any other law."""
    if isinstance(fn, MultivariateNormal):
        return fn.loc, fn.covariance_matrix
    if isinstance(fn, Independent) and type(fn.base_dist) in (Normal, _pyro_normal()) \
            and fn.reinterpreted_batch_ndims == 1:
        loc, scale = torch.broadcast_tensors(fn.base_dist.loc, fn.base_dist.scale)
        return loc, torch.diag_embed(scale ** 2)
    return None


def _pyro_normal() -> type:
    import pyro.distributions as dist

    return dist.Normal


# ---------------------------------------------------------------------------- the prior


@dataclass(frozen=True)
class PriorOnPlane:
    """The prior's density over the window's grid and where it came from."""

    density: np.ndarray        # [n, n], rows y increasing: p(u), per unit area of the plane
    how: str                   # one phrase for the page
    draws: np.ndarray          # [M, 2]: prior draws of the site, projected
    levels: list[tuple[float, float]]  # (mass, density level) of each drawn contour


def prior_draws(model, site: str, x: Tensor, fields: Batch, n: int) -> tuple[Tensor, object]:
    """``n`` draws ``[n, d]`` of the site from the story's prior (every other latent drawn
    too), and the site's distribution when the site is the story's first latent (then it
    is the prior itself, per row; else ``None``)."""
    trace = trace_program(model, *rows_of(x, fields, n))
    fn = trace.nodes[site]["fn"] if _first_latent(trace) == site else None
    return trace.nodes[site]["value"].reshape(n, -1), fn


def prior_on_plane(model, site: str, x: Tensor, fields: Batch, plane: Plane,
                   window: Window, draws: np.ndarray, n: int = 120) -> PriorOnPlane:
    """p(u) on the ``n × n`` grid of ``window``: exact for a 2-D site that is the story's
    first latent (its law's own density, averaged over the rows' fields), the exact
    projection of a Gaussian prior above 2-D, else a kernel estimate from ``draws``
    (prior draws of the site, ``[M, 2]`` on the plane)."""
    _, _, nodes = window.grid(n)
    # p(z | y) differs by row in a story that reads the fields: then averaged over rows.
    rows = min(len(x), 256) if reads_fields(model, fields) else 1
    _, fn = prior_draws(model, site, x, fields, rows)
    density, how = None, ""
    if fn is not None and plane.dim == 2:
        density, how = _exact_density(fn, plane.lift(nodes)), "exact"
    elif fn is not None and plane.dim > 2 and _gaussian(fn) is not None:
        density, how = _projected_gaussian(fn, plane, nodes), "exact (a Gaussian, projected)"
    if density is None or not np.isfinite(density).all():
        density, how = _kernel_density(draws, window, n)
    density = density.reshape(n, n)
    cell = (window.x1 - window.x0) * (window.y1 - window.y0) / (n - 1) ** 2
    return PriorOnPlane(density, how, draws, hpd_levels(density, cell))


def _exact_density(fn, z: np.ndarray) -> np.ndarray | None:
    """The mean over the law's rows of its density at each z ``[M, 2]``."""
    value = torch.as_tensor(z, dtype=torch.get_default_dtype())
    try:
        with torch.no_grad():
            log_p = fn.log_prob(value.unsqueeze(1).to(_device(fn)))  # [M, rows]
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    if log_p.dim() != 2:
        return None
    log_mean = torch.logsumexp(log_p.double(), 1) - math.log(log_p.shape[1])
    return log_mean.exp().cpu().numpy()


def _device(fn) -> torch.device:
    tensors = [v for v in vars(fn).values() if isinstance(v, Tensor)]
    base = getattr(fn, "base_dist", None)
    if not tensors and base is not None:
        return _device(base)
    return tensors[0].device if tensors else torch.device("cpu")


def _projected_gaussian(fn, plane: Plane, nodes: np.ndarray) -> np.ndarray:
    """Density on the plane of the projection of a Gaussian law, mixed over its rows:
    u = Aᵀ(z − c) ~ N(Aᵀ(μ_r − c), Aᵀ Σ_r A)."""
    loc, cov = (t.double().cpu().numpy() for t in _gaussian(fn))
    loc, cov = loc.reshape(-1, plane.dim), cov.reshape(-1, plane.dim, plane.dim)
    means = (loc - plane.center) @ plane.axes                           # [R, 2]
    covs = np.einsum("di,rde,ej->rij", plane.axes, cov, plane.axes)     # [R, 2, 2]
    return np.mean([_gauss2(nodes, m, s) for m, s in zip(means, covs)], axis=0)


def _gauss2(u: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = u - mean
    sol = np.linalg.solve(cov, diff.T).T
    return np.exp(-0.5 * (diff * sol).sum(1)) / (2 * math.pi * math.sqrt(np.linalg.det(cov)))


def _kernel_density(draws: np.ndarray, window: Window, n: int) -> tuple[np.ndarray, str]:
    """A Gaussian kernel estimate (Scott's bandwidth per axis) from the draws, binned on
    the grid; draws outside the window count in the total, so masses stay masses."""
    from scipy.ndimage import gaussian_filter

    step = np.array([(window.x1 - window.x0) / (n - 1), (window.y1 - window.y0) / (n - 1)])
    cells = np.rint((draws - [window.x0, window.y0]) / step).astype(int)
    inside = ((cells >= 0) & (cells < n)).all(1)
    counts = np.zeros((n, n))
    np.add.at(counts, (cells[inside, 1], cells[inside, 0]), 1.0)
    bandwidth = draws.std(0).clip(min=1e-6) * len(draws) ** (-1 / 6)
    smooth = gaussian_filter(counts, sigma=(bandwidth[1] / step[1], bandwidth[0] / step[0]),
                             mode="constant")
    how = (f"estimated from {len(draws):,} prior draws (Gaussian kernel, bandwidth "
           f"{bandwidth[0]:.2g} × {bandwidth[1]:.2g})")
    return smooth / (len(draws) * step[0] * step[1]), how


def hpd_levels(density: np.ndarray, cell: float) -> list[tuple[float, float]]:
    """For each of :data:`MASSES`, the density level whose region {p ≥ level} holds that
    mass of the prior (cells of area ``cell``); a mass the window cannot hold is left out."""
    values = np.sort(density.ravel())[::-1]
    mass = np.cumsum(values) * cell
    return [(m, float(values[np.searchsorted(mass, m)])) for m in MASSES if mass[-1] >= m]


def contour_lines(density: np.ndarray, window: Window, level: float) -> list[list[float]]:
    """The level set of ``density`` as polylines, each flattened ``[x0, y0, x1, y1, …]``."""
    import contourpy

    n = density.shape[0]
    xs, ys, _ = window.grid(n)
    lines = contourpy.contour_generator(x=xs, y=ys, z=density).lines(level)
    return [np.round(line, 4).ravel().tolist() for line in lines if len(line) > 1]


# ---------------------------------------------------------------------------- q(z | x)


@dataclass(frozen=True)
class Posteriors:
    """Each test image's q(z | x) on the plane: ``mean`` ``[N, 2]``, ``cov`` ``[N, 2, 2]``
    (for d > 2 the slice of q by the plane, for d ≤ 2 q itself), ``kl`` ``[N]`` (KL(q ‖ p)
    in nats, where both have closed forms), and how the moments were had."""

    mean: np.ndarray
    cov: np.ndarray
    kl: np.ndarray | None
    how: str


def posteriors(model, guide, site: str, x: Tensor, fields: Batch, plane: Plane,
               draws: int = 16) -> Posteriors:
    """q(z_site | x) of each image: Gaussian moments read off the guide's law where the site
    is the guide's first latent and its law is Gaussian, else estimated from ``draws`` draws
    per image (the guide run on the images repeated)."""
    trace = trace_program(guide, x, fields)
    fn = trace.nodes[site]["fn"]
    exact = _first_latent(trace) == site and _gaussian(fn) is not None
    if exact:
        loc, cov = _gaussian(fn)
        how = "q's own mean and covariance"
    else:
        loc, cov = _sampled_moments(guide, site, x, fields, draws)
        how = f"mean and covariance of {draws} draws from q per image"
    loc = loc.reshape(len(x), -1).double().cpu().numpy()
    cov = cov.reshape(len(x), plane.dim, plane.dim).double().cpu().numpy()
    mean, cov2 = gaussians_on_plane(loc, cov, plane)
    kl = _kl(model, fn, site, x, fields) if exact else None
    return Posteriors(mean, cov2, kl, how)


def _sampled_moments(guide, site: str, x: Tensor, fields: Batch, draws: int):
    values = trace_program(guide, *rows_of(x, fields, draws * len(x))).nodes[site]["value"]
    z = values.reshape(draws, len(x), -1).double()
    mean = z.mean(0)
    diff = z - mean
    cov = torch.einsum("snd,sne->nde", diff, diff) / (draws - 1)
    return mean, cov + 1e-9 * torch.eye(z.shape[-1], dtype=z.dtype)


def gaussians_on_plane(loc: np.ndarray, cov: np.ndarray, plane: Plane
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussians N(loc_n, cov_n) carried to the plane: projected for d ≤ 2 (the plane is
    z-space), else restricted to it, N(u*, P⁻¹) with P = Aᵀ Σ⁻¹ A, u* = P⁻¹ Aᵀ Σ⁻¹ (μ − c)."""
    a = plane.axes
    if plane.dim <= 2:
        return (loc - plane.center) @ a, np.einsum("di,nde,ej->nij", a, cov, a)
    inv = np.linalg.inv(cov)
    precision = np.einsum("di,nde,ej->nij", a, inv, a)
    sigma = np.linalg.inv(precision)
    rhs = np.einsum("di,nde,ne->ni", a, inv, loc - plane.center)
    return np.einsum("nij,nj->ni", sigma, rhs), sigma


def _kl(model, q_fn, site: str, x: Tensor, fields: Batch) -> np.ndarray | None:
    """KL(q(z | x) ‖ p(z)) per image, where the site is the story's first latent and the
    pair has a closed form; else ``None``."""
    trace = trace_program(model, x, fields)
    if _first_latent(trace) != site:
        return None
    try:
        kl = kl_divergence(q_fn, trace.nodes[site]["fn"])
    except NotImplementedError:
        return None
    return kl.reshape(len(x)).double().cpu().numpy() if kl.numel() == len(x) else None
