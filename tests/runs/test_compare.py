"""``pyro_vae.compare_runs`` and ``write_comparison``: one row per run folder, the settings in
which the runs differ and only those, blank cells where a run was not evaluated or diagnosed,
no ranking across different data, and no story code imported.

The folders are real: tiny fits on digits, one of them evaluated (IWAE and AIS) and
diagnosed by the command line, so the columns are read from what ``evaluate`` and
``diagnose`` actually write.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pyro_vae import compare_runs, write_comparison
from pyro_vae.cli import main

from support import flipped_digits, train_tiny

EVALUATE = ["--samples", "20", "--points", "20", "--method", "ais", "--steps", "4", "--chains",
            "2", "--warmup-steps", "2", "--leapfrog", "2", "--no-progress"]
DIAGNOSE = ["--points", "2", "--chains", "1", "--warmup", "5", "--samples", "5", "--local-steps",
            "5", "--elbo-samples", "20", "--no-progress"]
MEASURED = ("IWAE", "AIS", "k̂ > 0.7", "approx. gap", "amort. gap", "active units")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``base`` (evaluated and diagnosed), ``mixture`` (another prior and learning rate, nothing
    measured), ``flipped`` (other data)."""
    out = tmp_path_factory.mktemp("compare")
    base = train_tiny(out, "base")
    assert main(["evaluate", str(base), *EVALUATE]) == 0
    assert main(["diagnose", str(base), *DIAGNOSE]) == 0
    return {"base": base,
            "mixture": train_tiny(out, "mixture", "--prior", "mixture", "--components", "3",
                                  "--lr", "0.002"),
            "flipped": train_tiny(out, "flipped", "--data", str(flipped_digits(out / "flip.npz")))}


def cells(comparison) -> list[dict[str, str]]:
    return [dict(zip(comparison.columns(), row)) for row in comparison.table()]


def test_every_column_is_there_and_read_from_the_runs_files(runs):
    c = compare_runs([runs["base"], runs["mixture"]])
    for column in ("run", "story", "prior", "likelihood", "decoder", "encoder", "guide", "epochs",
                   "train s", "final val ELBO", "best val ELBO", "rank", "evaluated on", *MEASURED):
        assert column in c.columns(), column
    base = cells(c)[0]
    evaluation = json.loads((runs["base"] / "evaluation.json").read_text())
    diagnostics = json.loads((runs["base"] / "diagnostics.json").read_text())
    iwae, ais = evaluation["estimates"]["iwae"], evaluation["ais"]["estimate"]
    assert base["IWAE"] == f"{iwae['mean']:.2f} ± {iwae['stderr']:.2f}"
    assert base["AIS"] == f"{ais['mean']:.2f} ± {ais['stderr']:.2f}"
    assert base["k̂ > 0.7"] == f"{100 * evaluation['psis']['fraction_khat_above']:.1f}%"
    assert base["evaluated on"] == "20 test, K=20, T=4, C=2"
    gap = diagnostics["gaps"]["approximation_gap"]
    assert base["approx. gap"].startswith(f"{gap:.2f} ± ")
    assert base["active units"] == "z {}/2".format(diagnostics["collapse"]["sites"]["z"]["active_units"])
    summary = json.loads((runs["base"] / "summary.json").read_text())
    assert base["best val ELBO"] == f"{summary['best_val_elbo']:.2f}"
    assert base["final val ELBO"] == f"{summary['final_val_elbo']:.2f}"
    assert base["epochs"] == "2" and base["story"] == "VAE" and base["prior"] == "normal"
    assert cells(c)[1]["prior"] == "mixture"


def test_only_the_settings_that_differ_are_shown(runs):
    c = compare_runs([runs["base"], runs["mixture"]])
    shown = {k.split(".", 1)[-1] for k in c.differing}
    # The mixture's own options (unset for the normal prior), and the learning rate.
    assert "lr" in shown and "options.prior.mixture.components" in shown
    assert all(k.startswith(("train.lr", "model.options.prior.mixture.")) for k in c.differing), c.differing
    for same in ("batch_size", "latent_dim", "seed", "hidden_sizes", "data", "device"):
        assert same not in c.columns(), same
    row = cells(c)
    assert row[0]["lr"] == "0.001" and row[1]["lr"] == "0.002"
    assert row[0]["prior.mixture.components"] == "" and row[1]["prior.mixture.components"] == "3"
    # Two runs alike in every setting: no setting column at all.
    twin = shutil.copytree(runs["base"], runs["base"].parent / "twin", dirs_exist_ok=True)
    assert compare_runs([runs["base"], twin]).differing == []


def test_a_run_without_evaluation_has_blank_cells(runs):
    c = compare_runs([runs["base"], runs["mixture"]])
    mixture = cells(c)[1]
    for column in (*MEASURED, "evaluated on", "diagnosed on"):
        assert mixture[column] == "", column
    assert "None" not in c.text() and "nan" not in c.text()
    record = c.to_json()["runs"][1]
    assert record["iwae"] is None and record["ais"] is None and record["active_units"] is None
    # A column no run has a value for is left out of the table (and kept, null, in the JSON).
    alone = compare_runs([runs["mixture"]])
    assert not set(MEASURED) & set(alone.columns())


def test_comparable_runs_are_ranked_by_best_validation_elbo(runs):
    c = compare_runs([runs["base"], runs["mixture"]])
    assert c.comparable
    best = [r.best_val_elbo for r in c.runs]
    assert c.ranks == ([1, 2] if best[0] > best[1] else [2, 1])
    assert any(n.startswith("rank: by best validation ELBO") for n in c.notes)


def test_runs_of_different_data_are_not_comparable_and_not_ranked(runs):
    c = compare_runs([runs["base"], runs["flipped"]])
    assert not c.comparable and c.why_not == ["different data"]
    assert c.ranks == [None, None] and "rank" not in c.columns()
    assert any(n.startswith("not comparable: the runs fit different data") for n in c.notes)
    assert "not comparable" in c.text()
    assert "data" in c.columns()  # the setting that differs, shown
    assert c.to_json()["comparable"] is False


def test_different_likelihoods_are_not_ranked_either(runs, tmp_path):
    other = shutil.copytree(runs["mixture"], tmp_path / "gaussian")
    config = json.loads((other / "config.json").read_text())
    config["model"]["likelihood"] = "gaussian"
    (other / "config.json").write_text(json.dumps(config))
    c = compare_runs([runs["base"], other])
    assert c.why_not == ["different likelihoods"] and c.ranks == [None, None]


def test_a_story_file_run_is_read_without_importing_its_story(runs, tmp_path):
    story = tmp_path / "tiny.py"
    story.write_text((Path(__file__).resolve().parents[2] / "examples/stories/ink.py").read_text())
    run = train_tiny(tmp_path / "runs", "ink", "--model", f"{story}:InkStory",
                     "--model-arg", "latent_dim=2")
    marker = tmp_path / "marker"
    with open(run / "story.py", "a") as f:  # compare must never run it
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    c = compare_runs([runs["base"], run])
    row = cells(c)[1]
    assert row["story"] == "tiny.py:InkStory" and row["guide"] == "auto" and row["prior"] == ""
    assert row["model-arg latent_dim"] == "2"
    assert not marker.exists()


def test_a_folder_that_is_not_a_run_is_one_line(runs, tmp_path):
    with pytest.raises(ValueError, match="is not a pyro-vae run folder") as err:
        compare_runs([runs["base"], tmp_path])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no such run folder"):
        compare_runs([tmp_path / "nowhere"])


def test_an_unreadable_evaluation_is_blank_and_said(runs, tmp_path):
    run = shutil.copytree(runs["mixture"], tmp_path / "broken")
    (run / "evaluation.json").write_text("{half a file")
    c = compare_runs([run])
    assert c.runs[0].iwae is None
    assert any("evaluation.json could not be read" in n for n in c.notes)


def test_the_files_json_png_and_an_offline_page(runs, tmp_path):
    c = compare_runs([runs["base"], runs["mixture"], runs["flipped"]])
    files = write_comparison(c, tmp_path / "out", html_page=True)
    assert files.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files.figure.stat().st_size > 5000
    record = json.loads(files.json.read_text())
    assert [r["name"] for r in record["runs"]] == ["base", "mixture", "flipped"]
    assert record["columns"] == c.columns() and record["figure"] == "val_elbo.png"
    assert len(record["runs"][0]["val_elbo_curve"]["val_elbo"]) == 2
    page = files.html.read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page, flags=re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links
    assert not re.search(r"""(?:src|href)\s*=\s*['"]?\s*(?:https?:)?//""", page, flags=re.I)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    for name in ("base", "mixture", "flipped", "not comparable"):
        assert name in page
    assert write_comparison(c, tmp_path / "plain").html is None


def _with_curve(run: Path, folder: Path, values: list[float]) -> Path:
    """A copy of ``run`` whose metrics.jsonl validated epochs 1, 2, … with ``values``."""
    copy = shutil.copytree(run, folder)
    (copy / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "val_elbo": v, "seconds": 1.0}) + "\n"
        for e, v in enumerate(values, 1)))
    return copy


def test_runs_stopped_at_different_epochs_are_read_at_the_epochs_all_reached(runs, tmp_path):
    long = _with_curve(runs["base"], tmp_path / "long", [-100.0 + e for e in range(30)])
    short = _with_curve(runs["mixture"], tmp_path / "short", [-90.0 - e for e in range(12)])
    c = compare_runs([long, short])
    # Epochs 3–12 are the last ten the short run reached: −98 … −89, and −92 … −101.
    assert [cells(c)[i]["val ELBO, common epochs"] for i in (0, 1)] == ["-93.50", "-96.50"]
    assert cells(c)[0]["final val ELBO"] == "-71.00"  # its own last epoch, not the common one
    assert any(n.startswith("val ELBO, common epochs: each run's mean validation ELBO over "
                            "epochs 3–12") for n in c.notes)
    same = compare_runs([long, _with_curve(runs["mixture"], tmp_path / "even", [-95.0] * 30)])
    assert "val ELBO, common epochs" not in same.columns()  # they ended together: nothing to add


def _iwae_cell(run: Path, key: str) -> str:
    est = json.loads((run / "evaluation.json").read_text())["entries"][key]["estimates"]["iwae"]
    return f"{est['mean']:.2f} ± {est['stderr']:.2f}"


def test_each_run_is_read_at_its_most_thorough_evaluation_or_the_one_runs_share(runs, tmp_path):
    """evaluation.json keeps an entry per setting; the table reads the most images, not the
    entry run last, and several runs at the most thorough setting they all have."""
    run = shutil.copytree(runs["base"], tmp_path / "more")
    fast = ["--samples", "20", "--no-progress"]
    assert main(["evaluate", str(run), "--points", "30", *fast]) == 0
    assert main(["evaluate", str(run), "--points", "10", *fast]) == 0  # the latest: fewer images
    alone = compare_runs([run])
    assert cells(alone)[0]["IWAE"] == _iwae_cell(run, "iwae-test-N30-K20-seed0")
    assert cells(alone)[0]["evaluated on"] == "30 test, K=20; AIS 20 test, T=4, C=2"
    assert alone.runs[0].read_from["iwae"] == "iwae-test-N30-K20-seed0"
    assert any("more: IWAE read from its entry iwae-test-N30-K20-seed0" in n
               and "iwae-test-N10-K20-seed0" in n for n in alone.notes), alone.notes
    # Beside base, which has only the 20 images: both are read at those, so no warning
    both = compare_runs([run, runs["base"]])
    assert [r["IWAE"] for r in cells(both)] == [_iwae_cell(run, "iwae-test-N20-K20-seed0"),
                                               _iwae_cell(runs["base"], "iwae-test-N20-K20-seed0")]
    assert {r["evaluated on"] for r in cells(both)} == {"20 test, K=20, T=4, C=2"}
    assert not any("different images" in n for n in both.notes), both.notes
    assert "evaluations" not in both.to_json()["runs"][0]
