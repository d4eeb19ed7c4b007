"""A fitted run as the starting weights of a shipped story's parts (:class:`Weights`).

A story builder names the keywords that take a run in its ``weights`` attribute (M1 + M2's
``m1``); :func:`resolve_weights` replaces each value given, a run folder or a checkpoint
file, by the run's parameters, read from its safetensors checkpoint (no code runs). The
fitted run must be of the built-in VAE with the same parts and sizes as the new run's flags.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pyro_vae.config import ModelConfig
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.records import WHICH
from pyro_vae.stories import part_options
from pyro_vae.weights import Weights

# What must agree between the fitted run and the run that starts from it (the prior is
# the one part a stacked story replaces).
MATCHED = ("latent_dim", "hidden_sizes", "activation", "decoder", "encoder", "likelihood",
           "guide")


def resolve_weights(builder: object, args: dict, model: ModelConfig, restoring: bool) -> dict:
    """``args`` with each of the builder's weight keywords read into :class:`Weights`
    (``restoring``: the story's own run folder is being rebuilt, so nothing is read)."""
    out = dict(args)
    for key in getattr(builder, "weights", ()):
        if key in out:
            source = str(out[key])
            out[key] = Weights(source, None) if restoring else run_weights(source, model, key)
    return out


def run_weights(source: str, model: ModelConfig, key: str = "m1") -> Weights:
    """The parameters of the VAE run (or checkpoint file) ``source``, checked against
    ``model``: its best checkpoint when the folder has one, else its last."""
    path = Path(source)
    if path.is_dir():
        best = path / WHICH["best"]
        path = best if best.is_file() else path / WHICH["last"]
    if not path.is_file():
        raise ValueError(f"--model-arg {key}={source}: no such run folder or checkpoint file")
    ckpt = load_checkpoint(path)
    config = ckpt.meta.get("config", {}) if isinstance(ckpt.meta, dict) else {}
    if config.get("story", {}).get("model"):
        raise ValueError(f"--model-arg {key}={source}: a run of the story "
                         f"{config['story']['model']!r}; {key} must be a run of the built-in VAE")
    differ = _differences(config.get("model", {}), model)
    if differ:
        raise ValueError(f"--model-arg {key}={source} was fitted with {'; '.join(differ)}: "
                         f"give this run the same model flags")
    tensors = {name.replace(".story.", ".", 1): value for name, value in ckpt.modules.items()}
    return Weights(source, tensors)


def _differences(theirs: dict, ours: ModelConfig) -> list[str]:
    """'X (this run: Y)' for each matched setting, and each matched part's options (with
    their defaults filled in), that differ between the fitted run's config and ``ours``."""
    mine = json.loads(json.dumps(dataclasses.asdict(ours)))  # tuples as the lists saved
    out = [f"{k} {theirs.get(k)!r} (this run: {mine[k]!r})" for k in MATCHED
           if theirs.get(k) != mine[k]]
    if out:
        return out
    fitted = dataclasses.replace(ours, options=theirs.get("options", {}))
    return [f"{kind} options {part_options(fitted, kind)} (this run: {part_options(ours, kind)})"
            for kind in ("decoder", "likelihood", "encoder", "guide")
            if part_options(fitted, kind) != part_options(ours, kind)]
