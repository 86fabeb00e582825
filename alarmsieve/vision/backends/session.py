"""onnxruntime sessions for the detector backends, with weights taken out of the graph inputs, and
``OnnxBackend``: what every onnxruntime backend sets up the same way (options, provenance, session).

Some exports (the NanoDet and PicoDet-S files) list every weight among the graph's inputs as well as
among its initializers. onnxruntime must then treat each weight as something the caller might
override, so it cannot fold constants: the same outputs, 1.5-2x slower. ``strip_weight_inputs``
removes those inputs (only inputs that are also initializers) and the session loads the bytes.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from alarmsieve.vision.backends.base import (
    CPU,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_FLOOR,
    DetectorBackend,
    check_options,
)
from alarmsieve.vision.models import ResolvedModel


def strip_weight_inputs(model_bytes: bytes) -> tuple[bytes, int]:
    """The model with the graph inputs that are also initializers removed, and how many went."""
    import onnx  # late: only model loading needs it, not every import of the vision package

    model = onnx.load_from_string(model_bytes)
    weights = {init.name for init in model.graph.initializer}
    inputs = list(model.graph.input)
    real = [i for i in inputs if i.name not in weights]
    if len(real) == len(inputs):
        return model_bytes, 0
    del model.graph.input[:]
    model.graph.input.extend(real)
    return model.SerializeToString(), len(inputs) - len(real)


def open_session(
    path: Path, *, threads: int = 1, providers: list[str] | None = None, strip_weights: bool = True
) -> ort.InferenceSession:
    """A session on ``path``: one intra-op thread by default (pipelines scale out with workers, not
    threads), all graph optimisations, weights folded when ``strip_weights``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Unstripped exports warn once per weight; the choice is deliberate, so keep the logs readable.
    opts.log_severity_level = 3
    source: str | bytes = str(path)
    if strip_weights:
        data = Path(path).read_bytes()
        stripped, removed = strip_weight_inputs(data)
        if removed:
            source = stripped
    return ort.InferenceSession(source, sess_options=opts, providers=providers or [CPU])


class OnnxBackend(DetectorBackend):
    """The common part of the onnxruntime backends; a subclass decodes its family's outputs in ``detect``."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        score_floor: float = DEFAULT_SCORE_FLOOR,
        nms_iou: float = DEFAULT_NMS_IOU,
        threads: int = 1,
        providers: list[str] | None = None,
        strip_weights: bool = True,
    ) -> None:
        check_options(score_floor, nms_iou, threads)
        self.model_name = model.entry.name
        self.model_sha256 = model.sha256
        self.labels = model.entry.label_names
        self.preprocess = model.entry.preprocess
        self.calibration = model.entry.calibration  # raw score -> probability, used by the ensemble
        self.score_floor = score_floor
        self.nms_iou = nms_iou
        self._session = open_session(model.path, threads=threads, providers=providers, strip_weights=strip_weights)
        self.providers = self._session.get_providers()  # what onnxruntime really uses (CUDA may fall back)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self.input_size = inp.shape[2] if isinstance(inp.shape[2], int) else model.entry.input_size
