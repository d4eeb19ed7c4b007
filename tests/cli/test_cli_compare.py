"""``pyro-vae compare RUN... [--out DIR] [--html]``: the table on stdout, compare.json,
val_elbo.png and the offline compare.html in ``--out`` (``./compare`` by default); a folder
that is not a run is one line with exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pyro_vae.cli import main

from support import flipped_digits, run_cli, train_tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {"a": train_tiny(out, "a"),
            "b": train_tiny(out, "b", "--latent-dim", "3", "--beta", "0.5"),
            "flipped": train_tiny(out, "flipped", "--data", str(flipped_digits(out / "f.npz")))}


def test_compare_prints_the_table_and_writes_its_files(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--html"]) == 0
    out, err = capsys.readouterr()
    header = out.splitlines()[0].split()
    for column in ("run", "story", "prior", "guide", "latent_dim", "beta", "epochs", "rank"):
        assert column in header, column
    assert "lr" not in header and "batch_size" not in header  # the same in both runs
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    assert set(rows) == {"a", "b"}
    folder = tmp_path / "compare"  # the default --out
    for name in ("compare.json", "val_elbo.png", "compare.html"):
        assert (folder / name).stat().st_size > 0, name
        assert str(folder.relative_to(tmp_path) / name) in err
    record = json.loads((folder / "compare.json").read_text())
    assert record["comparable"] and sorted(record["differing_options"]) == ["beta", "latent_dim"]
    page = (folder / "compare.html").read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*['"]?\s*(?:https?:)?//""", page, flags=re.I)
    assert "data:image/png;base64," in page


def test_runs_of_different_data_are_said_to_be_not_comparable(runs, tmp_path, capsys):
    assert main(["compare", str(runs["a"]), str(runs["flipped"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not comparable: the runs fit different data" in out
    assert "rank" not in out.splitlines()[0].split()
    assert not (tmp_path / "compare.html").exists()  # only with --html
    assert (tmp_path / "val_elbo.png").exists()


def test_a_folder_that_is_not_a_run_is_one_line(runs, tmp_path, capsys):
    code, err = run_cli(["compare", str(runs["a"]), str(tmp_path), "--out", str(tmp_path / "c")],
                        capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path} is not a pyro-vae run folder" in err
    assert not (tmp_path / "c").exists()  # nothing written
