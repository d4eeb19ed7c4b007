"""explorer.html in a real browser: headless Chromium (tests/browser.py, the DevTools protocol
on a pipe) loads the page from disk and is driven as a person would drive it.

- The decoder the page runs equals PyTorch's to 1e-5 on random z (relative above 1; float32
  weights; the page computes in double precision, so it equals PyTorch's float64 decode to
  rounding), for every activation the page knows and for a trained decoder, and each
  likelihood's log-density and mean equal torch's.
- Moving the pointer to two points changes the decoded image, and each canvas holds
  PyTorch's decode of the z the page reports, to the 8-bit level; hovering shows the test
  image, clicking chooses it; a screenshot goes into the run folder; the page is ready in
  under 2 s. An MNIST page (where the data is present) stays under 5 MB and opens as fast.

Skipped, with the reason, only where no Chromium can be found (``.ci/run`` installs one).
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch

from pyro_vae import prior_predictive
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.explore import EXPLORER_FILE, write_explorer
from pyro_vae.runs import load_run

from browser import Chromium, find_chromium
from support import page_array, page_spec, untrained

READY = "window.explorer && window.explorer.ready"


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (install Debian's chromium, as .ci/run does, or set "
                    "PYRO_VAE_CHROMIUM)")
    with Chromium(binary) as b:
        yield b


def opened(browser: Chromium, path) -> float:
    """Load a page and wait until it has drawn; the seconds from navigation to ready."""
    start = time.monotonic()
    browser.open(path)
    browser.wait_until(READY)
    return time.monotonic() - start


def small(activation: str = "relu", likelihood: str = "bernoulli", data: str = "digits",
          hidden: tuple[int, ...] = (32, 16)) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=hidden, activation=activation,
                                       likelihood=likelihood),
                     data=DataConfig(name=data), train=TrainConfig(device="cpu"))


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus", "elu", "silu", "gelu"])
def test_the_pages_decoder_equals_pytorchs(activation, browser, tmp_path):
    data, model, guide = untrained(small(activation, hidden=(128, 64)))
    page = write_explorer(model, guide, data, tmp_path / "p.html")
    assert page.mode == "mlp"
    opened(browser, page.path)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)) * 2.5
    js = np.array(browser.evaluate(f"{json.dumps(z.tolist())}.map(explorer.mlp)"))
    with torch.no_grad():
        f32 = model.decoder(z).numpy()
        f64 = model.decoder.double()(z.double()).numpy()
    agree(js, f32, f64)


def agree(js: np.ndarray, f32: np.ndarray, f64: np.ndarray) -> None:
    """The page's outputs equal PyTorch's float32 ones to 1e-5 (relative above 1: a trained
    decoder's logits reach 60, where float32 itself rounds by 1e-5) and PyTorch's float64
    ones to rounding (the page computes in double precision from the same float32 weights)."""
    scale = np.maximum(1.0, np.abs(f64))
    assert (np.abs(js - f32) / scale).max() < 1e-5
    assert (np.abs(js - f64) / scale).max() < 1e-12


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-pixel", "continuous-bernoulli",
                                        "discretized-logistic"])
def test_the_pages_likelihoods_equal_torchs(likelihood, browser, tmp_path):
    """log p(x | z) of test images and the mean image at points of the plane, against torch in
    float64 like the page's arithmetic (in float32, the continuous Bernoulli's mean just outside
    its Taylor region, λ/(2λ − 1) + 1/log((1 − λ)/λ), loses 3 digits to cancellation). The
    constants the page holds (a learned σ, a logistic scale) are float32: agreement to 1e-7."""
    name = "digits"
    if likelihood == "discretized-logistic":  # 8-bit pixels: the digits on the k/255 grid
        from sklearn.datasets import load_digits

        name = str(tmp_path / "digits8.npy")
        np.save(name, np.rint(load_digits().images * 255 / 16).astype(np.uint8))
    data, model, guide = untrained(small(likelihood=likelihood, data=name))
    page = write_explorer(model, guide, data, tmp_path / "p.html")
    opened(browser, page.path)
    x = data.eval_split("test").double()
    double = copy.deepcopy(model.fn).double()
    for j, u in enumerate([(0.3, -0.7), (-1.9, 1.2), (2.2, 0.4)]):
        with torch.no_grad():
            law = double.x_dist(torch.tensor([u], dtype=torch.float64))
            log_p, mean = float(law.log_prob(x[j:j + 1])), law.mean[0].numpy()
        assert browser.evaluate(f"explorer.logLikAt({list(u)}, {j})") == pytest.approx(log_p, rel=1e-7)
        assert np.abs(np.array(browser.evaluate(f"explorer.meanAt({list(u)})")) - mean).max() < 1e-7


MEAN_PIXELS = """(() => {
  const c = document.getElementById("mean"), s = c.width / %(w)d;
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, out = [];
  for (let h = 0; h < %(h)d; h++) for (let w = 0; w < %(w)d; w++)
    out.push(px[4 * ((h * s + (s >> 1)) * c.width + w * s + (s >> 1))]);
  return out;
})()"""
DRAW_PIXELS = """(() => {
  const c = document.getElementById("draws");
  return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
})()"""


def rect(browser: Chromium, element: str) -> tuple[float, float]:
    return tuple(browser.evaluate(
        f"(() => {{ const r = document.getElementById('{element}').getBoundingClientRect(); "
        f"return [r.left, r.top]; }})()"))


def test_moving_the_pointer_decodes_as_pytorch_does(explore_run, browser):
    loaded = load_run(explore_run)
    spec = page_spec(explore_run / EXPLORER_FILE)
    x0, x1, y0, y1 = spec["window"]
    seconds = opened(browser, explore_run / EXPLORER_FILE)
    assert seconds < 2.0 and browser.evaluate("explorer.readyMs") < 2000
    left, top = rect(browser, "map-over")
    template = loaded.data.eval_split("test")[:1]
    images = []
    for px, py in [(120.0, 300.0), (330.0, 110.0)]:
        before = browser.evaluate("explorer.state.updates")
        browser.move_mouse(left + px, top + py)
        browser.wait_until(f"explorer.state.updates > {before}")
        z = browser.evaluate("explorer.z")
        assert z == pytest.approx([x0 + px / 440 * (x1 - x0), y1 - py / 440 * (y1 - y0)], abs=1e-9)
        mean, _ = prior_predictive(loaded.model, template, {"y": loaded.data.test.labels[:1]},
                                   {"z": torch.tensor([z])})
        expected = np.rint(mean[0].clamp(0, 1).numpy() * 255)
        shown = np.array(browser.evaluate(MEAN_PIXELS % {"w": 8, "h": 8}))
        assert np.abs(shown - expected).max() <= 1  # the same decode, rounded to 8 bits
        images.append(shown)
        draws = np.array(browser.evaluate(DRAW_PIXELS)).reshape(-1, 4)[:, :3]
        grey = draws[(draws[:, 0] == draws[:, 1]) & (draws[:, 1] == draws[:, 2])]
        assert set(np.unique(grey)) <= {0, 255}  # Bernoulli draws: black or white pixels
        assert len(grey) >= 6 * 64 * (browser.evaluate("document.getElementById('draws').height - 12") // 8) ** 2
        assert (draws == [31, 120, 181]).all(1).any()  # the gaps between tiles
    assert np.abs(images[0] - images[1]).max() > 40  # a different z, a different image
    z = torch.rand(64, 2, generator=torch.Generator().manual_seed(2)) * torch.tensor(
        [x1 - x0, y1 - y0]) + torch.tensor([x0, y0])     # the trained decoder over the window
    js = np.array(browser.evaluate(f"{json.dumps(z.tolist())}.map(explorer.mlp)"))
    with torch.no_grad():
        agree(js, loaded.model.decoder(z).numpy(),
              copy.deepcopy(loaded.model.decoder).double()(z.double()).numpy())
    browser.screenshot(explore_run / "explorer_screenshot.png")
    assert (explore_run / "explorer_screenshot.png").stat().st_size > 20_000


def test_hover_shows_the_image_and_click_chooses_it(explore_run, browser):
    spec = page_spec(explore_run / EXPLORER_FILE)
    points, labels = page_array(spec["points"]), page_array(spec["labels"])
    x0, x1, y0, y1 = spec["window"]
    opened(browser, explore_run / EXPLORER_FILE)
    left, top = rect(browser, "map-over")
    j = 7
    px = float((points[j, 0] - x0) / (x1 - x0) * 440)
    py = float((y1 - points[j, 1]) / (y1 - y0) * 440)
    browser.move_mouse(left + px, top + py)
    browser.wait_until("document.getElementById('tip').style.display === 'block'")
    hovered = browser.evaluate("explorer.state.hover")
    assert browser.evaluate("document.getElementById('tip-label').textContent") == \
        f"test image {hovered}, label {labels[hovered]}"
    browser.click(left + px, top + py)
    browser.wait_until(f"explorer.state.chosen === {hovered} && explorer.heatReady")
    loaded = load_run(explore_run)
    x = loaded.data.eval_split("test")[hovered:hovered + 1]
    u = page_array(spec["q"]["mean"])[hovered].tolist()
    with torch.no_grad():
        log_p = float(loaded.model.x_dist(torch.tensor([u])).log_prob(x))
    shown = browser.evaluate("document.getElementById('readout').textContent")
    assert f"log p(x | z) at q's mean{log_p:.1f} nats" in shown


def test_a_grid_page_is_exact_at_its_nodes_and_interpolates_between(browser, tmp_path):
    cfg = small()
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,), decoder="conv",
                                      options={"decoder": {"conv": {"channels": (4, 4),
                                                                    "hidden": 8}}}),
                    train=cfg.train)
    data, model, guide = untrained(cfg)
    page = write_explorer(model, guide, data, tmp_path / "p.html")
    spec = page_spec(page.path)
    n = spec["decoder"]["resolution"]
    x0, x1, y0, y1 = spec["window"]
    logits = page_array(spec["decoder"]["laws"][0]["params"]["logits"]["data"])
    opened(browser, page.path)
    i, j = 5, 9
    node = [x0 + j * (x1 - x0) / (n - 1), y0 + i * (y1 - y0) / (n - 1)]
    template = data.eval_split("test")[:1]
    mean, _ = prior_predictive(model, template, {"y": data.test.labels[:1]}, {"z": torch.tensor([node])})
    assert np.abs(np.array(browser.evaluate(f"explorer.meanAt({node})")) - mean[0].numpy()).max() < 1e-6
    mid = [node[0] + 0.25 * (x1 - x0) / (n - 1), node[1] + 0.5 * (y1 - y0) / (n - 1)]
    rows = logits[[i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1]]
    bilinear = (0.75 * 0.5 * rows[0] + 0.25 * 0.5 * rows[1] + 0.75 * 0.5 * rows[2]
                + 0.25 * 0.5 * rows[3])
    shown = np.array(browser.evaluate(f"explorer.meanAt({mid})"))
    assert np.abs(shown - 1 / (1 + np.exp(-bilinear.astype(np.float64)))).max() < 1e-6
    assert f"a grid of {n} × {n} points" in browser.evaluate("document.getElementById('notes').textContent")


def test_an_mnist_page_is_small_and_opens_at_once(mnist_root, browser, tmp_path):
    """The default model on MNIST (hidden 256, 128), 2000 test images: under 5 MB, ready in
    under 2 s (its decoder untrained: size and speed do not depend on the fit)."""
    cfg = RunConfig(data=DataConfig(name="mnist", root=str(mnist_root)), train=TrainConfig(device="cpu"))
    data, model, guide = untrained(cfg)
    page = write_explorer(model, guide, data, tmp_path / EXPLORER_FILE)
    assert page.mode == "mlp" and page.size < 5e6
    assert opened(browser, page.path) < 2.0
    browser.wait_until("explorer.heatReady", timeout=20)
    browser.screenshot(tmp_path / "explorer_screenshot.png")
