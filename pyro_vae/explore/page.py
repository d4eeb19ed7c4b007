"""``explorer.html``: one self-contained page (no server, nothing fetched) that lets a person
move through a fitted story's latent space and watch x change.

The page is the template ``explorer.html`` and the script ``explorer.js`` (package data)
with the run's numbers (:func:`pyro_vae.explore.spec.explorer_spec`) inlined as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from pyro_vae.explore.spec import explorer_spec
from pyro_vae.files import atomic_write
from pyro_vae.programs import Batch, seeded
from pyro_vae.traces import is_real, latent_sites, slice_rows

EXPLORER_FILE = "explorer.html"
POINTS = 2000
"""Test images on the latent map (latent_map.png draws as many)."""


class NoRealLatentError(ValueError):
    """The story has no real-valued latent site to explore (or not the one asked for)."""


@dataclass(frozen=True)
class ExplorerPage:
    """What :func:`write_explorer` wrote: the page, the site it explores, ``mode``
    (``"mlp"``: the decoder runs in the page; ``"grid"``: a grid the page interpolates),
    the heat map's (or grid's) points per side, and the page's size in bytes."""

    path: Path
    site: str
    mode: str
    resolution: int
    size: int


def real_sites(model, x: Tensor, fields: Batch) -> list[str]:
    """The story's continuous latent sites whose support is all of ℝ^d, in order."""
    return [s.name for s in latent_sites(model, x[:2], slice_rows(dict(fields), 0, 2),
                                         who="the explorer") if is_real(s.support)]


def choose_site(model, x: Tensor, fields: Batch, site: str | None) -> str:
    """``site``, or the story's first real-valued latent site; :class:`NoRealLatentError`
    (one line) where there is none, or ``site`` is not one."""
    names = real_sites(model, x, fields)
    story = getattr(model, "name", "the story")
    if not names:
        raise NoRealLatentError(f"no explorer: the story {story} has no real-valued latent "
                                f"site to move through")
    if site is not None and site not in names:
        raise NoRealLatentError(f"--site {site}: not a real-valued latent site of the story "
                                f"{story}; those are {', '.join(names)}")
    return site or names[0]


def write_explorer(model, guide, data, path: Path, *, site: str | None = None, seed: int = 0,
                   caption: str = "", points: int = POINTS) -> ExplorerPage:
    """Write the explorer of a fitted story (``model``, ``guide``: Pyro programs; ``data``:
    a :class:`pyro_vae.data.Data`) to ``path``, atomically, over the first ``points`` test
    images (binarized as evaluate scores them, with ``seed``). ``site`` defaults to the
    first real-valued latent site; ``caption`` is a line under the title."""
    x = data.eval_split("test", seed=seed)[:points]
    fields = slice_rows(data.test.fields(), 0, len(x))
    labels = None if data.test.labels is None else data.test.labels[:len(x)]
    site = choose_site(model, x, fields, site)
    with torch.no_grad(), seeded(seed, x.device):
        spec = explorer_spec(model, guide, x, fields, labels, tuple(data.image_shape), site)
    spec["caption"] = caption
    html = render(spec).encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), html)
    return ExplorerPage(Path(path), site, spec["decoder"]["mode"], spec["decoder"]["resolution"],
                        len(html))


def render(spec: dict) -> str:
    """The page: the template with the script and the spec inlined (``</`` escaped, so no
    string of the spec can close its script element)."""
    folder = resources.files("pyro_vae.explore")
    template = (folder / "explorer.html").read_text(encoding="utf-8")
    script = (folder / "explorer.js").read_text(encoding="utf-8")
    data = json.dumps(spec, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = f"{spec['story']}: latent site {spec['site']}".replace("&", "&amp;").replace("<", "&lt;")
    return (template.replace("{{TITLE}}", title).replace("/*{{SPEC}}*/", data)
            .replace("/*{{SCRIPT}}*/", script))
