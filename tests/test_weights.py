"""pyro_vae.weights: a fitted run's tensors load into a part only when they fit it exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_vae.weights import Weights


def _saved(net: nn.Module, prefix: str = "model.decoder.") -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in net.state_dict().items()}


def test_the_entries_under_the_prefix_load_and_others_are_left_alone():
    torch.manual_seed(0)
    fitted, fresh = nn.Linear(3, 2), nn.Linear(3, 2)
    tensors = _saved(fitted) | {"guide.head.weight": torch.zeros(5)}
    Weights("run", tensors).load(fresh, "model.decoder.")
    assert torch.equal(fresh.weight, fitted.weight) and torch.equal(fresh.bias, fitted.bias)


def test_rebuilding_from_the_story_s_own_checkpoint_reads_nothing():
    net = nn.Linear(3, 2)
    before = net.weight.clone()
    Weights("run", None).load(net, "model.decoder.")
    assert torch.equal(net.weight, before)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("model.decoder.bias"), "lacks parameter 'model.decoder.bias' (shape [2])"),
    (lambda t: t.update({"model.decoder.weight": torch.zeros(2, 4)}),
     "parameter 'model.decoder.weight' has shape [2, 4] but this model expects [2, 3]"),
    (lambda t: t.update({"model.decoder.scale": torch.zeros(2)}),
     "holds parameter 'model.decoder.scale', which this story has no place for"),
])
def test_a_missing_misshapen_or_extra_entry_is_refused_and_loads_nothing(change, message):
    torch.manual_seed(0)
    tensors = _saved(nn.Linear(3, 2))
    change(tensors)
    net = nn.Linear(3, 2)
    before = net.weight.clone()
    with pytest.raises(ValueError, match="other parts than this story asks for") as err:
        Weights("runs/m1", tensors).load(net, "model.decoder.")
    assert str(err.value).startswith("runs/m1: " + message)
    assert torch.equal(net.weight, before)
