"""Contract: every registered decoder and likelihood (the decoder part, z → the parameters of
p(x | z) and its mean) and every registered encoder and guide (the encoder part, x → the
parameters of q(z | x)) exports to ``torch.export`` and to ONNX, and the files, run back in
``torch.export.load`` and ``onnxruntime`` on random inputs of another batch size than they
were traced with, agree with the PyTorch module: max abs error ≤ 1e-5 in float32 (or, where
PyTorch's own float32 result is further than that from float64, twice that distance: the
continuous Bernoulli's mean cancels two large terms near λ = 1/2).

The cases are made from the registries, so a part registered later is exported here too;
:func:`test_every_registered_part_is_covered` fails if the cases ever leave one out. Each
part is traced once, for both its files (``benchmarks/export_agreement.py`` prints the same
table with the export times).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from pyro_vae.export import (
    TOLERANCE,
    ExportError,
    check_file,
    find_parts,
    save,
    to_onnx,
    traced,
)
from pyro_vae.guides import ENCODERS, GUIDES, AutoAmortizedGuide, MLPEncoder
from pyro_vae.models import DECODERS, LIKELIHOODS
from pyro_vae.programs import as_program
from pyro_vae.stories import load_object

from support import load_benchmark

D = 64


BENCH = load_benchmark("export_agreement")  # its cases are these (one definition)
CASES = BENCH.cases()


def test_every_registered_part_is_covered():
    decoders = [(d, lik) for r, d, lik in CASES if r == "decoder"]
    encoders = [(e, g) for r, e, g in CASES if r == "encoder"]
    assert {d for d, _ in decoders} == set(DECODERS)
    assert {lik for _, lik in decoders} == set(LIKELIHOODS)
    assert {e for e, _ in encoders} == set(ENCODERS)
    assert {g for _, g in encoders} == set(GUIDES)


_part = BENCH.tiny_part


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(role, first, second, format)`` → the part and the :class:`Agreement` of its file;
    each part is traced once, for both of its files."""
    folder = tmp_path_factory.mktemp("export")
    done: dict = {}

    def get(role: str, first: str, second: str, fmt: str):
        key = (role, first, second)
        if key not in done:
            part = _part(*key)
            done[key] = part, traced(part)
        part, program = done[key]
        written = program if fmt == "pt2" else to_onnx(program, part)
        path = save(written, fmt, folder / f"{part.name}.{fmt}")
        return part, check_file(part, fmt, path, 0.0, batch=5, seed=1)

    return get


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("role,first,second", CASES)
def test_the_file_agrees_with_pytorch(exported, role, first, second, fmt):
    part, agreement = exported(role, first, second, fmt)
    print(f"{role} {first}/{second} {fmt}: max abs error {agreement.max_abs_error:.2e}")
    assert agreement.errors.keys() == set(part.outputs)
    for name, error in agreement.errors.items():
        assert error <= agreement.allowed(name), (name, error, agreement.float32_errors)
        if agreement.float32_errors[name] <= TOLERANCE / 2:  # the 1e-5 of float32 holds
            assert error <= TOLERANCE, (name, error)
    assert agreement.batch != 16  # traced on 16 rows: the batch axis is dynamic


def test_the_parts_say_what_they_give():
    decoder = _part("decoder", "mlp", "gaussian")
    assert decoder.outputs == ("loc", "scale", "mean") and list(decoder.inputs) == ["z"]
    assert decoder.inputs["z"].shape == (16, 2) and decoder.batched == ("z",)
    full = _part("encoder", "mlp", "full-rank")
    assert full.outputs == ("loc", "scale_tril") and full.law == "MultivariateNormal"
    iaf = _part("encoder", "mlp", "iaf")
    assert list(iaf.inputs) == ["x", "eps"] and iaf.outputs == ("base_loc", "base_scale", "draw")


FUNCTION_STORY = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn

    decoder = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 64))


    def with_network(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


    def without_network(x):
        w = pyro.param("w", torch.zeros(2, 64))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ w).to_event(1), obs=x)
    ''')


def _story_programs(tmp_path: Path, name: str):
    (tmp_path / "story.py").write_text(FUNCTION_STORY)
    model = as_program(load_object(tmp_path / "story.py", name), name)
    x = torch.bernoulli(torch.full((16, D), 0.3), generator=torch.Generator().manual_seed(0))
    guide = as_program(AutoAmortizedGuide(model, MLPEncoder(D, (8,)), x), "auto")
    return model, guide, x


def test_a_function_story_exports_the_network_it_gives_pyro_module(tmp_path):
    model, guide, x = _story_programs(tmp_path, "with_network")
    decoder, encoder = find_parts(model, guide, x, {})
    assert decoder.name == "decoder-decoder" and list(decoder.inputs) == ["input"]
    assert encoder.source == "AutoAmortizedGuide.site_dists"
    agreement = check_file(decoder, "pt2", save(traced(decoder), "pt2", tmp_path / "d.pt2"), 0.0)
    assert agreement.max_abs_error <= TOLERANCE


def test_a_story_without_nn_modules_is_refused_in_one_line(tmp_path):
    model, guide, x = _story_programs(tmp_path, "without_network")
    with pytest.raises(ExportError) as err:
        find_parts(model, guide, x, {})
    assert "without_network has no decoder to export" in str(err.value)
    assert "nn.Module" in str(err.value) and "\n" not in str(err.value)
    assert find_parts(model, guide, x, {}, ("encoder",))  # its automatic guide exports
