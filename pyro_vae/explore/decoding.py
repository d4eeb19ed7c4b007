"""What the decoder makes of a point z, in the two forms the page can use.

The story is run with its chosen site held at z (``poutine.condition``) and every other
latent at its mean under the story (:class:`HoldOthers`: the mode for a discrete one),
and the image site's law is read off the trace: p(x | z) as the story itself defines it,
whatever the story is. The page evaluates four laws itself (:func:`family_of`); any other
is shown by its mean alone.

- ``mlp``: the story's ``decoder`` is an MLP whose output *is* the law's varying parameter
  (checked on random z) and z is its only latent: its float32 weights go into the page.
- ``grid``: otherwise, the law's parameters at every node of a grid over the window, which
  the page interpolates bilinearly (exact at the nodes).

A story whose image changes with a label given z (``y`` as a per-row field, or a discrete
latent such as M2's) gets one grid per label value, chosen on the page (:class:`Variants`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyro_vae.models import BernoulliLogits, BinNormal, DiscretizedLogistic, MLPDecoder
from pyro_vae.predictive import image_mean
from pyro_vae.traces import image_site, is_latent, trace_program

MAX_WEIGHTS = 3 * 2 ** 20
"""Bytes of float32 weights the page may embed (MNIST's default decoder: 0.9 MB)."""
GRID_BYTES = 2.4e6
"""Bytes of float32 parameters the grids may take, all label values together."""
HEAT_MACS = 4e8
"""Multiply-adds one heat map may cost the page's decoder (about half a second)."""

LAWS = {
    "bernoulli": ((torch.distributions.Bernoulli, dist.Bernoulli, BernoulliLogits), ("logits",)),
    "normal": ((torch.distributions.Normal, dist.Normal, BinNormal), ("loc", "scale")),
    "continuous-bernoulli": ((torch.distributions.ContinuousBernoulli, dist.ContinuousBernoulli),
                             ("logits",)),
    "discretized-logistic": ((DiscretizedLogistic,), ("loc", "scale")),
}
"""The laws the page scores and draws from itself: their exact classes and parameters (the
first is the one a decoder gives)."""

ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
               nn.ELU: "elu", nn.Softplus: "softplus", nn.GELU: "gelu"}


class HoldOthers(Messenger):
    """Every latent sample site not in ``keep`` takes its distribution's mean (the mode of a
    discrete one) instead of a draw; a law without a closed-form mean is drawn as usual."""

    def __init__(self, keep: set[str]) -> None:
        super().__init__()
        self.keep = keep
        self.drawn: set[str] = set()

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["name"] in self.keep or site_is_subsample(msg) \
                or msg["value"] is not None:
            return
        fn = msg["fn"]
        try:
            value = fn.mode if fn.support.is_discrete else fn.mean
        except NotImplementedError:
            self.drawn.add(msg["name"])
            return
        msg["value"] = value.expand(fn.shape()) if value.shape != fn.shape() else value


@dataclass(frozen=True)
class Family:
    """The image site's law at M points: ``name`` (a key of :data:`LAWS`, or ``"mean"``
    where the page knows only the mean), each parameter ``[M, D]``, and a constant added
    to each pixel's log-density (a binned Gaussian's −log L)."""

    name: str
    params: dict[str, Tensor]
    offset: float = 0.0


def family_of(fn, rows: int, dim: int) -> Family:
    """The law ``fn`` (batch ``[rows]``, event ``[dim]``) as a :class:`Family`."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if tuple(fn.batch_shape) == (rows,) and tuple(fn.event_shape) == (dim,):
        for name, (kinds, names) in LAWS.items():
            if type(base) in kinds:
                values = torch.broadcast_tensors(*(getattr(base, n) for n in names))
                params = {n: v.expand(rows, dim).detach().float() for n, v in zip(names, values)}
                return Family(name, params, -float(getattr(base, "log_levels", 0.0)))
    mean = image_mean({"fn": fn, "value": torch.zeros(rows, dim)})
    return Family("mean", {"mean": mean.reshape(rows, dim).detach().float()})


@dataclass(frozen=True)
class Variants:
    """Values of a label the image depends on given z: a per-row field (``kind="field"``)
    or a discrete latent site (``kind="site"``), named ``name``."""

    kind: str
    name: str
    values: list[int]


@dataclass(frozen=True)
class Decoding:
    """How to run the story at z: its site, a template row of x ``[1, D]`` and its fields."""

    model: object
    site: str
    event_shape: tuple[int, ...]
    x: Tensor
    fields: dict[str, Tensor]
    drawn: set[str] = field(default_factory=set)

    def law(self, z: Tensor, value: tuple[Variants, int] | None = None) -> Family:
        """The image site's law at the rows of ``z`` ``[M, d]`` (a label ``value`` held)."""
        m = len(z)
        xs = self.x.expand(m, -1)
        fields = {k: v.expand(m, *v.shape[1:]) for k, v in self.fields.items()}
        data = {self.site: z.reshape(m, *self.event_shape).to(xs)}
        if value is not None and value[0].kind == "field":
            fields[value[0].name] = torch.full((m,), value[1], dtype=torch.long, device=xs.device)
        elif value is not None:
            data[value[0].name] = torch.full((m,), value[1], dtype=torch.long, device=xs.device)
        hold = HoldOthers(set(data))
        trace = trace_program(hold(poutine.condition(self.model, data=data)), xs, fields)
        self.drawn.update(hold.drawn)
        return family_of(trace.nodes[image_site(trace, xs)]["fn"], m, xs.shape[1])

    def laws(self, z: Tensor, value=None, chunk: int = 1024) -> Family:
        """:meth:`law` in chunks of rows, joined."""
        parts = [self.law(z[i:i + chunk], value) for i in range(0, len(z), chunk)]
        params = {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params}
        return Family(parts[0].name, params, parts[0].offset)

    def other_latents(self) -> list[str]:
        """The story's latent sites besides the chosen one (held, or drawn)."""
        trace = trace_program(self.model, self.x, self.fields)
        return [n for n, s in trace.nodes.items() if is_latent(s) and n != self.site]


def find_variants(dec: Decoding, z: Tensor, labels: Tensor | None) -> Variants | None:
    """The label the image depends on given z, if any: the field ``y`` (its values 0..K−1,
    K the story's ``classes`` or the labels' range), else the first discrete latent site
    with at most 32 values; ``None`` when the image at ``z`` ``[M, d]`` does not change."""
    candidates = []
    if "y" in dec.fields and labels is not None and _reads(dec.model, "y"):
        k = getattr(dec.model, "classes", None)
        candidates.append(Variants("field", "y", list(range(k if isinstance(k, int)
                                                           else int(labels.max()) + 1))))
    trace = trace_program(HoldOthers({dec.site})(dec.model), dec.x, dec.fields)
    for name, s in trace.nodes.items():
        if is_latent(s) and s["fn"].support.is_discrete and s["fn"].has_enumerate_support:
            size = s["fn"].enumerate_support(expand=False).numel()
            if size <= 32:
                candidates.append(Variants("site", name, list(range(size))))
    for v in candidates:
        if len(v.values) > 1 and not same_law(dec.law(z, (v, 0)), dec.law(z, (v, 1))):
            return v
    return None


def _reads(program, name: str) -> bool:
    accepts = getattr(program, "accepts", None)
    return accepts is None or name in accepts


def same_law(a: Family, b: Family) -> bool:
    """Whether two laws at the same points are the same (name and every parameter)."""
    return a.name == b.name and all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def constant_params(fam: Family) -> dict[str, bool]:
    """Which parameters are the same at every row (stored once, not per grid node)."""
    return {k: bool((v == v[:1]).all()) for k, v in fam.params.items()}


# ---------------------------------------------------------------------------- MLP export


@dataclass(frozen=True)
class MLPExport:
    """The decoder's layers (float32 ``weight`` ``[out, in]``, ``bias`` ``[out]``, the
    activation after it or ``None``), its law with that law's constant parameters ``[1, D]``,
    and the name of the parameter the decoder gives."""

    layers: list[dict]
    family: Family
    macs: int
    output: str


def mlp_layers(module: nn.Module) -> list[dict] | None:
    """An MLP's Linear layers and activations, or ``None`` for any other network."""
    net = module.net if isinstance(module, MLPDecoder) else module
    if not isinstance(net, nn.Sequential):
        return None
    layers: list[dict] = []
    for m in net:
        act = _activation(m)
        if type(m) is nn.Linear:
            bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
            layers.append({"weight": m.weight.detach().float().cpu().numpy(),
                           "bias": bias.detach().float().cpu().numpy(), "act": None})
        elif act and layers and layers[-1]["act"] is None:
            layers[-1]["act"] = act
        elif type(m) is not nn.Identity:
            return None
    return layers or None


def _activation(m: nn.Module) -> str | None:
    name = ACTIVATIONS.get(type(m))
    if type(m) is nn.Softplus and (m.beta != 1 or m.threshold != 20):
        return None
    if type(m) is nn.ELU and m.alpha != 1.0:
        return None
    if type(m) is nn.GELU and m.approximate != "none":
        return "gelu-tanh"
    return name


def export_mlp(dec: Decoding, probe: Tensor) -> tuple[MLPExport | None, str]:
    """The decoder as weights when the page can run it exactly: z is the story's only
    latent, the story's ``decoder`` is an MLP, and at the rows of ``probe`` ``[M, d]`` the
    law's first parameter is that MLP's output and its others do not change. Else ``None``
    and why not (a phrase for the page)."""
    story = getattr(dec.model, "fn", dec.model)
    network = getattr(story, "decoder", None)
    layers = mlp_layers(network) if isinstance(network, nn.Module) else None
    if layers is None:
        return None, "the story's decoder is not an MLP the page can run"
    if dec.other_latents():
        return None, f"the story has other latent sites ({', '.join(dec.other_latents())})"
    size = sum(a["weight"].nbytes + a["bias"].nbytes for a in layers)
    if size > MAX_WEIGHTS:
        return None, f"its weights ({size / 2 ** 20:.1f} MB) are too large to embed"
    fam = dec.law(probe)
    if fam.name == "mean":
        return None, "the page cannot score this likelihood"
    first, *rest = fam.params
    with torch.no_grad():
        out = network(probe.to(fam.params[first].device).float())
    same = out.shape == fam.params[first].shape and torch.allclose(out, fam.params[first],
                                                                   rtol=1e-6, atol=1e-6)
    fixed = constant_params(fam)
    if not same or not all(fixed[k] for k in rest):
        return None, "its decoder's output is not the likelihood's parameter itself"
    consts = {k: fam.params[k][:1] for k in rest}
    macs = sum(a["weight"].size for a in layers)
    return MLPExport(layers, Family(fam.name, consts, fam.offset), macs, first), ""


def heat_resolution(macs: int) -> int:
    """Points per side of a heat map the page computes with a decoder of ``macs``
    multiply-adds per z: within :data:`HEAT_MACS`, 24 to 64."""
    return int(min(64, max(24, math.isqrt(int(HEAT_MACS // max(macs, 1))))))


def grid_resolution(dim: int, varying: int, variants: int) -> int:
    """Nodes per side of the grids: :data:`GRID_BYTES` of float32 for ``varying``
    parameters of ``dim`` pixels per node, for each of ``variants`` label values; 8 to 64."""
    per_node = 4 * dim * max(varying, 1) * max(variants, 1)
    return int(min(64, max(8, math.isqrt(int(GRID_BYTES // per_node)))))


def grid_laws(dec: Decoding, nodes: Tensor, variants: Variants | None) -> list[Family]:
    """The law at every node ``[G², d]``, for each label value (one Family, else one)."""
    if variants is None:
        return [dec.laws(nodes)]
    return [dec.laws(nodes, (variants, v)) for v in variants.values]


def as_array(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
