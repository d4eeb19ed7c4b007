"""pyro_vae.evaluation.classify.label_probs: q(y | x) read from the guide's trace, and where the guide draws a latent before y (its q(y | ·) reads the draw) the
mean over LABEL_DRAWS draws, the Monte Carlo marginal; the per-epoch scoring's own stream."""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.data.loading import from_tensor
from pyro_vae.evaluation import epoch_metrics, label_probs
from pyro_vae.evaluation.classify import LABEL_DRAWS, keep_labels

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])


def label_first(x: torch.Tensor, calls: list) -> None:
    calls.append(1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=LOGITS))
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))


def drawn_first(x: torch.Tensor, calls: list) -> None:
    calls.append(1)
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("y", dist.Categorical(logits=LOGITS * u[:, None]))


def drawn_unread(x: torch.Tensor, calls: list) -> None:
    calls.append(1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("u", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("y", dist.Categorical(logits=LOGITS))


@pytest.mark.parametrize("guide, traces", [(label_first, 1), (drawn_unread, 2)])
def test_a_label_that_reads_no_draw_is_traced_once_or_twice(guide, traces):
    """First in the guide: one trace. After a draw it does not read: a second trace finds
    the same q(y | ·), and no more are made."""
    calls: list = []
    probs = label_probs(lambda x: guide(x, calls), torch.zeros(2, 1), {}, "y")
    assert len(calls) == traces and torch.allclose(probs, LOGITS.softmax(-1))


def test_a_label_read_from_a_draw_is_the_mean_over_the_draws():
    calls: list = []
    pyro.set_rng_seed(3)
    probs = label_probs(lambda x: drawn_first(x, calls), torch.zeros(2, 1), {}, "y")
    pyro.set_rng_seed(3)  # the same draws, by hand: softmax(LOGITS · u) of each trace's u
    us = [pyro.poutine.trace(drawn_first).get_trace(torch.zeros(2, 1), []).nodes["u"]["value"]
          for _ in range(LABEL_DRAWS)]
    by_hand = torch.stack([(LOGITS * u[:, None]).softmax(-1) for u in us]).mean(0)
    assert len(calls) == LABEL_DRAWS and torch.allclose(probs, by_hand, atol=1e-6)
    assert not torch.allclose(probs, (LOGITS * us[0][:, None]).softmax(-1))  # not one draw


def test_a_guide_without_the_label_site_is_one_clear_error():
    with pytest.raises(ValueError, match="this guide has no site 'label'"):
        label_probs(lambda x: drawn_first(x, []), torch.zeros(2, 1), {}, "label")


def test_scoring_an_epoch_leaves_the_fits_random_stream_as_it_was():
    """The per-epoch accuracy draws a from a stream of its own, seeded by the fit's seed and
    the epoch: the fit's stream is untouched (so a fit draws the same however it is scored),
    and the same epoch scores the same."""
    data = keep_labels(from_tensor(torch.rand(300, 4), torch.arange(10).repeat(30)), 10, seed=0)

    def guide(x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("y", dist.Categorical(logits=(u + x.sum(-1))[:, None] * torch.arange(10.0)))

    story = SimpleNamespace(label_site="y")
    session = SimpleNamespace(model=story, guide=guide, data=data, device=torch.device("cpu"))
    metrics = epoch_metrics(story, seed=0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = metrics(session, 3)
    assert torch.equal(torch.get_rng_state(), before)
    assert set(first) == {"val_accuracy", "test_accuracy"} and metrics(session, 3) == first
