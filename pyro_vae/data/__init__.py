"""The images a fit reads: registered datasets, array files and image folders, held in memory
(:mod:`~pyro_vae.data.images`) or streamed batch by batch (:mod:`~pyro_vae.data.streams`).
"""

from pyro_vae.data.images import (
                                  BINARIZE_MODES,
                                  DATASETS,
                                  GREY,
                                  UNKNOWN_LABEL,
                                  Data,
                                  RawImages,
                                  Split,
                                  load_array_file,
                                  load_raw,
                                  resolve_binarize,
)
from pyro_vae.data.loading import from_tensor, load_data
from pyro_vae.data.streams import (
                                  STREAM_MODES,
                                  STREAM_SHARE,
                                  HeldOutSplit,
                                  NpyRows,
                                  StepBatches,
                                  StreamedSplit,
                                  batch_loader,
                                  load_images,
                                  resolve_stream,
                                  split_or_stream,
                                  streamed_data,
)

__all__ = [
    "batch_loader",
    "BINARIZE_MODES",
    "Data",
    "DATASETS",
    "from_tensor",
    "GREY",
    "HeldOutSplit",
    "load_array_file",
    "load_data",
    "load_images",
    "load_raw",
    "NpyRows",
    "RawImages",
    "resolve_binarize",
    "resolve_stream",
    "Split",
    "split_or_stream",
    "StepBatches",
    "STREAM_MODES",
    "STREAM_SHARE",
    "streamed_data",
    "StreamedSplit",
    "UNKNOWN_LABEL",
]
