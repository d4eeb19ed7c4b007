"""``choose_evaluations``: which evaluation.json entry each compared run is read from (the
command-line path through real evaluations is in ``test_compare.py``)."""

from __future__ import annotations

from pyro_vae.runs.evaluations import choose_evaluations, from_entries


def _iwae(n: int, k: int) -> tuple[str, dict]:
    key = f"iwae-test-N{n}-K{k}-seed0"
    return key, {"method": "iwae", "key": key, "num_points": n, "num_samples": k, "split": "test",
                 "estimates": {"iwae": {"mean": -float(n + k), "stderr": 0.1}}}


def _ais(n: int, t: int, c: int) -> tuple[str, dict]:
    key = f"ais-test-N{n}-T{t}-C{c}-seed0"
    return key, {"method": "ais", "key": key, "num_points": n, "steps": t, "chains": c,
                 "split": "test", "estimate": {"mean": -1.0, "stderr": 0.1}}


def test_images_then_draws_then_chains_decide_and_the_order_run_does_not():
    entries = dict([_iwae(1000, 5000), _iwae(10000, 50), _iwae(10000, 5000), _iwae(100, 99999),
                    _ais(1000, 1000, 16), _ais(1000, 1000, 32), _ais(100, 10000, 64)])
    assert choose_evaluations([entries]) == [{"iwae": "iwae-test-N10000-K5000-seed0",
                                              "ais": "ais-test-N1000-T1000-C32-seed0"}]
    backwards = dict(reversed(list(entries.items())))
    assert choose_evaluations([backwards]) == choose_evaluations([entries])


def test_runs_are_read_at_the_most_thorough_setting_they_share_else_their_own():
    a = dict([_iwae(10000, 5000), _iwae(1000, 5000), _iwae(100, 5000), _ais(1000, 1000, 16)])
    b = dict([_iwae(1000, 5000), _iwae(100, 5000)])
    c = dict([_ais(100, 1000, 16)])
    chosen = choose_evaluations([a, b, c])
    assert [x.get("iwae") for x in chosen] == ["iwae-test-N1000-K5000-seed0"] * 2 + [None]
    # no AIS setting is shared by a and c: each is read at its own
    assert [x.get("ais") for x in chosen] == ["ais-test-N1000-T1000-C16-seed0", None,
                                              "ais-test-N100-T1000-C16-seed0"]
    assert choose_evaluations([{}, {}]) == [{}, {}]


def test_ais_on_fewer_images_than_iwae_is_said_apart():
    (_, iwae), (_, ais) = _iwae(10000, 5000), _ais(1000, 1000, 16)
    assert from_entries(iwae, ais)["evaluated_on"] == "10000 test, K=5000; AIS 1000 test, T=1000, C=16"
    assert from_entries(iwae, None)["evaluated_on"] == "10000 test, K=5000"
    assert from_entries(None, ais)["evaluated_on"] == "1000 test, T=1000, C=16"
    assert from_entries(None, None)["evaluated_on"] is None
