"""A story with structure: what a digit is (a style code) apart from where it sits (a pose).

For each image n:

.. code-block:: text

    z_n    ~ N(0, I_d)                    what is drawn, d = latent_dim
    pose_n ~ N(0, I_3)                    where it sits, in prior standard deviations
    (angle_n, dx_n, dy_n) = s ⊙ pose_n     s = pose_scale, (0.3, 0.15, 0.15) by default
    L_n    = f_θ(z_n)                     logits on an H × W canvas: the digit before it is moved
    x_n    ~ Bernoulli(sigmoid(warp(L_n; angle_n, dx_n, dy_n)))

so (angle, dx, dy) ~ N(0, diag s²): a rotation in radians and two shifts in
``affine_grid``'s coordinates, where the canvas spans [-1, 1] (0.15 is 0.6 pixels on
an 8 × 8 digit). ``warp`` samples the logit image through the affine grid of the pose
(``torch.nn.functional.affine_grid`` / ``grid_sample``); where the grid reads outside
the canvas the logit is a learned background value (blank paper), not a copy of the edge.

The pose site is written in standard units (``s`` multiplies it inside the story) on
purpose: an amortized guide starts near N(0, 0.7²) for every coordinate, which on the
scale of ``s`` itself would throw digits around by whole pixels in the first epochs,
and the decoder then learns one blurred blob and ignores ``z`` (posterior collapse).
NUTS in ``pyro-vae diagnose`` also prefers a posterior of similar scale in every direction.

A shifted or slanted digit can be explained by ``pose`` (three numbers under a narrow
prior) or by ``z`` (a different drawing for every position); the first is cheaper, so
the code is left for what the digit is and how it is written.

Train it (the guide is built automatically, one amortized Gaussian per latent site)::

    pyro-vae train --model examples/stories/spatial.py:Spatial --model-arg latent_dim=2 --epochs 200

and draw a digit at a fixed code, turned by one prior standard deviation (0.3 rad)::

    pyro-vae sample RUN --set z=0,0 --set pose=1,0,0
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Prior scales of (angle, x shift, y shift): small, so a pose only nudges the digit and
# cannot take over what the code should say.
POSE_SCALE = (0.3, 0.15, 0.15)
# Bicubic, not bilinear: the warped logits are then smooth in the pose, so NUTS (in
# pyro-vae diagnose) does not meet a kink at every pixel boundary and takes longer steps.
INTERPOLATION = "bicubic"


class Spatial(nn.Module):
    """The style-and-pose story for images of ``image_shape`` (H × W, or 1 × H × W)."""

    def __init__(self, data_dim: int, image_shape: tuple[int, ...], latent_dim: int = 2,
                 hidden: int = 128, pose_scale: tuple[float, float, float] = POSE_SCALE) -> None:
        super().__init__()
        self.canvas = tuple(image_shape[-2:])
        if self.canvas[0] * self.canvas[1] != data_dim:
            raise ValueError(f"Spatial draws one grey H × W canvas; image_shape "
                             f"{tuple(image_shape)} does not hold {data_dim} pixels")
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(),
                                     nn.Linear(hidden, data_dim))
        # Starts well below 0 so that what the warp uncovers begins as empty paper.
        self.background = nn.Parameter(torch.tensor(-3.0))
        self.register_buffer("zero", torch.zeros(latent_dim))
        self.register_buffer("pose_scale", torch.tensor(pose_scale, dtype=torch.float32))

    def z_dist(self) -> dist.Distribution:
        return dist.Normal(self.zero, 1.0).to_event(1)

    def pose_dist(self) -> dist.Distribution:
        return dist.Normal(torch.zeros_like(self.pose_scale), 1.0).to_event(1)

    def x_dist(self, z: Tensor, pose: Tensor) -> dist.Distribution:
        logits = self.warp(self.decoder(z), self.pose_scale * pose)
        return dist.Bernoulli(logits=logits).to_event(1)

    def warp(self, logits: Tensor, pose: Tensor) -> Tensor:
        """Flat logits ``[..., H·W]`` moved by ``pose [..., 3]`` = (angle, dx, dy); any batch
        shape (the evaluator adds a dimension of particles in front of the data rows)."""
        batch = torch.broadcast_shapes(logits.shape[:-1], pose.shape[:-1])
        canvas = logits.expand(*batch, logits.shape[-1]).reshape(-1, 1, *self.canvas)
        theta = affine_matrices(pose.expand(*batch, 3).reshape(-1, 3))
        grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
        # Warping logits − background with zero padding makes the outside the background.
        moved = F.grid_sample(canvas - self.background, grid, mode=INTERPOLATION,
                              align_corners=False)
        return (moved + self.background).reshape(*batch, -1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            pose = pyro.sample("pose", self.pose_dist())
            pyro.sample("x", self.x_dist(z, pose), obs=x)


def affine_matrices(pose: Tensor) -> Tensor:
    """``[M, 3]`` (angle, x shift, y shift) → ``[M, 2, 3]`` maps from output to input
    coordinates, as ``affine_grid`` reads them: a rotation by the angle, then the shift."""
    angle, tx, ty = pose.unbind(-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin, tx], -1),
                        torch.stack([sin, cos, ty], -1)], -2)
