"""The evaluation's k-curve figure: its zoomed panel shows the guide's estimators and AIS
on a scale where their gaps can be read, whatever prior Monte Carlo does."""

from __future__ import annotations

from types import SimpleNamespace

from matplotlib.image import imread

from pyro_vae.evaluation import plot_k_curve
from pyro_vae.evaluation.estimates import KCurve
from pyro_vae.evaluation.figures import ZOOMED, zoom_limits


def _trained_like() -> tuple[KCurve, list]:
    """Estimates shaped like a trained MNIST VAE's: prior MC hundreds of nats below the
    guide's ELBO and IWAE, and AIS half a nat above IWAE."""
    ks = (1, 10, 100, 1000)
    mean = {"prior_mc": (-600.0, -350.0, -230.0, -170.0), "elbo": (-90.0,) * 4,
            "iwae": (-90.0, -87.5, -86.6, -86.2)}
    stderr = {name: (0.8,) * 4 for name in mean}
    ais = [SimpleNamespace(config=SimpleNamespace(steps=t, chains=16),
                           estimate=SimpleNamespace(mean=m, stderr=0.75))
           for t, m in ((62, -85.53), (1000, -85.50))]
    return KCurve(ks, mean, stderr), ais


def test_the_zoomed_panel_holds_every_band_but_prior_monte_carlo():
    curve, ais = _trained_like()
    low, high = zoom_limits(curve, ZOOMED, exact=None, ais=ais)
    assert low <= -90.0 - 2 * 0.8 and high >= -85.50 + 2 * 0.75  # ELBO's and AIS's bands inside
    assert low > -100.0  # prior MC's -170 … -600 is left to the other panel
    # The span is the bands' own (-91.6 … -84.0) plus a margin of 8 % on each side.
    assert abs((high - low) - 7.6 * 1.16) < 1e-9


def test_an_exact_value_outside_the_curves_stays_on_the_zoomed_scale():
    curve, ais = _trained_like()
    low, high = zoom_limits(curve, ZOOMED, exact=-80.0, ais=ais)
    assert low < -91.6 and high > -80.0


def test_the_figure_is_written_with_two_panels(tmp_path):
    curve, ais = _trained_like()
    path = plot_k_curve(curve, tmp_path / "k.png", ais=ais, entry="iwae and ais")
    png = imread(path)[..., :3]
    # Two panels side by side: a column of page between them that no axis or curve inks.
    inked_columns = (png < 0.95).any(-1)[png.shape[0] // 4: 3 * png.shape[0] // 4].any(0)
    middle = inked_columns[png.shape[1] // 3: 2 * png.shape[1] // 3]
    assert not middle.all()
