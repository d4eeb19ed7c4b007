"""The explorer's numbers as one JSON-ready dict (arrays as base64, :func:`blob`): the
latent map, the prior, each test image's q(z | x) and the decoder (weights or grids), with
a sentence for the page on how each was had."""

from __future__ import annotations

import base64
import math

import numpy as np
import torch
from torch import Tensor

from pyro_vae.explore.decoding import (
    Decoding,
    Family,
    Variants,
    as_array,
    constant_params,
    export_mlp,
    find_variants,
    grid_laws,
    grid_resolution,
    heat_resolution,
    same_law,
)
from pyro_vae.explore.scene import (
    Plane,
    Posteriors,
    PriorOnPlane,
    Window,
    codes_and_plane,
    contour_lines,
    posteriors,
    prior_draws,
    prior_on_plane,
    square_window,
)
from pyro_vae.models import class_colour
from pyro_vae.programs import Batch
from pyro_vae.traces import slice_rows, trace_program

DRAWS = 4000
"""Prior draws that set the window and, where no exact density exists, estimate it."""
SHOWN_DRAWS = 100
"""Prior draws drawn on the heat map (a 2-D site): how few land where q puts its mass."""
IMAGE_BYTES = 1.5e6
"""Bytes the test images may take in the page (fewer images where they are not 8-bit)."""


def blob(a, kind: str) -> dict:
    """An array for the page: its shape and little-endian bytes in base64 (f32, i16, u8)."""
    dtype = {"f32": "<f4", "i16": "<i2", "u8": "u1"}[kind]
    a = np.ascontiguousarray(np.asarray(a), dtype=dtype)
    return {"dtype": kind, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def explorer_spec(model, guide, x: Tensor, fields: Batch, labels: Tensor | None,
                  image_shape: tuple[int, ...], site: str) -> dict:
    """Everything the page shows for ``site`` over test images ``x`` ``[N, D]``."""
    codes, plane = codes_and_plane(guide, site, x, fields)
    points = plane.project(codes)
    if plane.dim == 1:  # one coordinate: the vertical only spreads the points
        points[:, 1] = np.random.default_rng(0).uniform(-0.5, 0.5, len(points)) * codes.std()
    draws = plane.project(prior_draws(model, site, x, fields, DRAWS)[0].double().cpu().numpy())
    window = square_window(points, _central(draws, plane.dim))
    prior = prior_on_plane(model, site, x, fields, plane, window, draws) if plane.dim > 1 else None
    post = posteriors(model, guide, site, x, fields, plane)
    event = tuple(trace_program(model, x[:1], slice_rows(dict(fields), 0, 1)).nodes[site]["fn"]
                  .event_shape)
    dec = Decoding(model, site, event, x[:1], slice_rows(dict(fields), 0, 1))
    rng = np.random.default_rng(1)
    probe = torch.as_tensor(plane.lift(rng.uniform([window.x0, window.y0],
                                                   [window.x1, window.y1], (8, 2))),
                            dtype=torch.float32, device=x.device)
    variants = find_variants(dec, probe, labels)
    decoder = decoder_block(dec, probe, variants, plane, window)
    held = (variants, variants.values[0]) if variants else None  # the label is no x
    reads_x = len(x) > 1 and not same_law(dec.law(probe, held), Decoding(
        model, site, event, x[1:2], slice_rows(dict(fields), 1, 2)).law(probe, held))
    images, shown = test_images(x)
    spec = {
        "story": str(getattr(model, "name", "story")), "site": site, "dim": plane.dim,
        "image": image_layout(image_shape, x.shape[1]),
        "plane": {"center": plane.center.tolist(), "axes": plane.axes.T.tolist()},
        "window": [window.x0, window.x1, window.y0, window.y1],
        "points": blob(points[:shown], "f32"), "tests": images,
        "labels": None if labels is None else blob(labels[:shown].cpu().numpy(), "i16"),
        "prior": prior_block(prior, window), "q": q_block(post, shown),
        "decoder": decoder, "colours": colours(labels),
    }
    spec["notes"] = notes(spec, prior, post, dec, variants)
    if reads_x:
        spec["notes"].append("This story's p(x | z) also reads the image x itself (or its "
                             "fields): the page decodes with test image 0 in that role.")
    return spec


def _central(draws: np.ndarray, dim: int) -> np.ndarray:
    """The prior draws inside the central 99 % of each coordinate (the window holds them)."""
    inside = ((draws >= np.quantile(draws, 0.005, 0)) & (draws <= np.quantile(draws, 0.995, 0)))
    central = draws[inside.all(1)]
    return central if dim > 1 else central * [1.0, 0.0]


def decoder_block(dec: Decoding, probe: Tensor, variants: Variants | None, plane: Plane,
                  window: Window) -> dict:
    """The MLP's weights when the page can run it exactly, else the law on a grid (one per
    label value)."""
    mlp, why = (None, "the image depends on the label") if variants else export_mlp(dec, probe)
    if mlp is not None:
        layers = [{"weight": blob(a["weight"], "f32"), "bias": blob(a["bias"], "f32"),
                   "act": a["act"]} for a in mlp.layers]
        return {"mode": "mlp", "layers": layers, "resolution": heat_resolution(mlp.macs),
                "parameters": int(sum(a["weight"].size + a["bias"].size for a in mlp.layers)),
                "output": mlp.output, "laws": [law_block(mlp.family)], "variants": None}
    fam = dec.law(probe)
    varying = sum(not c for c in constant_params(fam).values())
    n = grid_resolution(x_dim(fam), varying, len(variants.values) if variants else 1)
    _, _, nodes = window.grid(n)
    z = torch.as_tensor(plane.lift(nodes), dtype=torch.float32, device=probe.device)
    laws = grid_laws(dec, z, variants)
    return {"mode": "grid", "resolution": n, "why": why, "laws": [law_block(f) for f in laws],
            "variants": None if variants is None else
            {"kind": variants.kind, "name": variants.name, "values": variants.values}}


def x_dim(fam: Family) -> int:
    return next(iter(fam.params.values())).shape[1]


def law_block(fam: Family) -> dict:
    """A law: its name, its per-pixel log-density offset, and each parameter, once
    (``[D]``, ``const``) where it is the same at every row, else per row ``[M, D]``."""
    fixed = constant_params(fam)
    return {"name": fam.name, "offset": fam.offset,
            "params": {k: {"const": fixed[k],
                           "data": blob(as_array(v[0] if fixed[k] else v), "f32")}
                       for k, v in fam.params.items()}}


def image_layout(image_shape: tuple[int, ...], dim: int) -> dict:
    """Channels, height and width of an image row (channel-major); a flat row is shown
    square where it can be, else as one line; channels other than 1 or 3 are stacked."""
    shape = tuple(image_shape)
    if len(shape) == 1:
        side = math.isqrt(dim)
        shape = (side, side) if side * side == dim else (1, dim)
    if len(shape) == 2:
        shape = (1, *shape)
    c, h, w = shape[-3:]
    return {"c": c, "h": h, "w": w} if c in (1, 3) else {"c": 1, "h": c * h, "w": w}


def test_images(x: Tensor) -> tuple[dict, int]:
    """The test images as the page holds them: bits for binary images, bytes for 8-bit
    ones, else float32 (as many as :data:`IMAGE_BYTES` allows); and how many."""
    a = x.detach().cpu().numpy()
    if np.isin(a, (0.0, 1.0)).all():
        return {"encoding": "bits", **blob(np.packbits(a.astype(np.uint8), 1, "little"), "u8")}, len(a)
    if np.allclose(a * 255, np.rint(a * 255), atol=1e-4):
        return {"encoding": "u8", **blob(np.rint(a * 255), "u8")}, len(a)
    n = max(1, min(len(a), int(IMAGE_BYTES // (4 * a.shape[1]))))
    return {"encoding": "f32", **blob(a[:n], "f32")}, n


def prior_block(prior: PriorOnPlane | None, window: Window) -> dict | None:
    if prior is None:
        return None
    return {"n": prior.density.shape[0], "how": prior.how, "density": blob(prior.density, "f32"),
            "draws": blob(prior.draws[:SHOWN_DRAWS], "f32"),
            "levels": [{"mass": m, "level": lv, "lines": contour_lines(prior.density, window, lv)}
                       for m, lv in prior.levels]}


def q_block(post: Posteriors, n: int) -> dict:
    cov = post.cov[:n]
    return {"how": post.how, "mean": blob(post.mean[:n], "f32"),
            "cov": blob(np.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]], 1), "f32"),
            "kl": None if post.kl is None else blob(post.kl[:n], "f32")}


def colours(labels: Tensor | None) -> dict:
    """Each label's colour (the figures' own), and the heat map's (viridis, 256 steps)."""
    from matplotlib import colormaps

    classes = 1 if labels is None else int(labels.max()) + 1
    hexes = ["#%02x%02x%02x" % tuple(int(255 * c) for c in class_colour(k, classes)[:3])
             for k in range(classes)]
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round()
    return {"labels": hexes, "heat": blob(lut, "u8")}


def notes(spec: dict, prior: PriorOnPlane | None, post: Posteriors, dec: Decoding,
          variants: Variants | None) -> list[str]:
    """How each panel's numbers were had, one sentence each."""
    d, site, out = spec["dim"], spec["site"], []
    if d == 1:
        out.append(f"{site} is 1-D: the horizontal axis is {site}; the vertical only spreads "
                   f"the points apart and carries no value.")
    elif d > 2:
        out.append(f"{site} has {d} dimensions. The map is the plane of latent_map.png: through "
                   f"the mean of the test codes, along their first two principal axes; a point "
                   f"on it is z = centre + u₁·a₁ + u₂·a₂ (the other {d - 2} directions stay at "
                   f"the centre). The heat map is the same plane, q(z | x) sliced by it.")
    if prior is not None:
        masses = ", ".join(f"{round(100 * m)}%" for m, _ in prior.levels)
        where = "the prior projected onto the plane" if d > 2 else "the prior"
        out.append(f"Contours: the regions of highest density of {where} holding {masses} of "
                   f"its mass ({prior.how}).")
    out.append(f"Ellipses: q({site} | x), 1σ and 2σ, from {post.how}.")
    out += decoder_notes(spec["decoder"], dec, variants, site)
    return out


def decoder_notes(decoder: dict, dec: Decoding, variants: Variants | None, site: str) -> list[str]:
    out = []
    if decoder["mode"] == "mlp":
        out.append(f"The decoder runs in this page: the run's MLP ({decoder['parameters']:,} "
                   f"float32 parameters, embedded), evaluated in double precision as you move; "
                   f"heat maps at {decoder['resolution']} × {decoder['resolution']} points.")
    else:
        n = decoder["resolution"]
        out.append(f"The decoder is read off a grid of {n} × {n} points over the visible square, "
                   f"computed by PyTorch ({decoder['why']}); between the points the page "
                   f"interpolates the likelihood's parameters bilinearly, so images and heat "
                   f"maps are exact only at the grid's points (heat maps: {n} × {n}).")
    others = dec.other_latents()
    if variants is not None and variants.kind == "site":
        others = [o for o in others if o != variants.name]
    if others:
        drawn = sorted(dec.drawn)
        out.append(f"Other latent sites ({', '.join(others)}) are held at their mean under the "
                   f"story given {site}" + (f" (drawn instead, seeded: {', '.join(drawn)}, which "
                                            f"has no closed-form mean)" if drawn else "") + ".")
    if variants is not None:
        out.append(f"The image depends on {variants.name} given {site}: choose its value by the "
                   f"decoder (choosing a test image takes its label).")
    if decoder["laws"][0]["name"] == "mean":
        out.append("The page cannot score or draw from this story's likelihood: it shows the "
                   "mean image alone (no draws, no heat map).")
    return out
