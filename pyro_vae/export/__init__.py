"""Exporting a fitted run's networks: the decoder (latents → the parameters of p(x | z) and
its mean) and the encoder (x → the parameters of q(z | x)) as ``torch.export`` programs
(``.pt2``) or ONNX files, with a model card, checked against PyTorch on random inputs.

Which functions a story's parts are (:mod:`~pyro_vae.export.parts`), tracing, converting,
writing and reading them back (:mod:`~pyro_vae.export.formats`), and the run folder's
``export/`` with its ``model_card.json`` (:mod:`~pyro_vae.export.card`).
"""

from pyro_vae.export.card import CARD, EXPORT_DIR, ExportResult, export_run
from pyro_vae.export.formats import (
                                     EXTRA,
                                     FORMATS,
                                     TOLERANCE,
                                     Agreement,
                                     MissingExtraError,
                                     check_file,
                                     require_onnx,
                                     save,
                                     to_onnx,
                                     traced,
)
from pyro_vae.export.parts import ROLES, ExportError, Part, find_parts

__all__ = [
    "Agreement",
    "CARD",
    "check_file",
    "EXPORT_DIR",
    "ExportError",
    "ExportResult",
    "export_run",
    "EXTRA",
    "find_parts",
    "FORMATS",
    "MissingExtraError",
    "Part",
    "require_onnx",
    "ROLES",
    "save",
    "to_onnx",
    "TOLERANCE",
    "traced",
]
