"""Run an encoder or a cross-encoder through ONNX Runtime or OpenVINO instead of torch.

The torch module (for an embedder: the encoder plus its heads, through the same
:func:`~flagstone.models.heads.encoder_forward` the torch path runs) is exported once to ONNX with dynamic batch
and sequence axes, converted when the backend needs it (OpenVINO IR, ONNX Runtime int8), and kept under
``<cache>/exports/<key>``. The key covers the model's weight fingerprint, the backend, what the files hold
(float32 or int8 weights) and the settings baked into the graph, so a changed checkpoint gets a new export and
an unchanged one is loaded from disk without exporting again.

Which precisions each backend offers, and why:

- ``torch``: ``float32``; ``bfloat16`` (autocast: matrix products in bfloat16, weights and norms in float32).
- ``onnx``: ``float32``; ``int8`` (ONNX Runtime dynamic quantisation of the weights; vectors differ, see the
  README's backend table for its retrieval quality).
- ``openvino``: ``float32`` (the inference precision hint is set to f32 explicitly: on CPUs with bfloat16
  OpenVINO's default is bf16); ``bfloat16`` (the bf16 hint; needs a CPU with bfloat16 instructions).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flagstone._io import atomic_folder
from flagstone.errors import BackendError, LossyPrecisionWarning, MissingDependencyError, require_extra
from flagstone.models._paths import default_cache_dir

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("float32", "bfloat16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("float32", "bfloat16"),
    "onnx": ("float32", "int8"),
    "openvino": ("float32", "bfloat16"),
}
# bumped when the export itself changes (wrapper, opset, conversion options): old exports are then not reused
EXPORT_FORMAT = 1


def check_backend(backend: str, precision: str) -> None:
    """A :class:`BackendError` for an unknown backend or precision, or one the backend does not offer."""
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision not in SUPPORTED[backend]:
        raise BackendError(f"backend {backend!r} offers precision {' or '.join(SUPPORTED[backend])}, "
                           f"not {precision!r}")


def warn_if_lossy(precision: str) -> None:
    """int8 warns that it is lossy: its vectors differ from float32 far beyond rounding. With per-channel weight
    scales its SciFact nDCG@10 on MiniLM was 0.6471 against float32's 0.6451 (per-tensor scales: 0.6392), within
    the 0.005 the project asks before offering it (README, "Inference backends"); other models may differ."""
    if precision == "int8":
        warnings.warn(LossyPrecisionWarning(
            "precision int8 quantises the weights: vectors differ from float32 far beyond rounding and retrieval "
            "quality may drop (see the README's backend table); prefer float32 or bfloat16 where quality matters"),
            stacklevel=3)


def backend_installed(backend: str) -> bool:
    """Whether ``backend``'s packages are importable (torch, a core dependency, always is): the check
    :func:`require_backend` makes, so the two never disagree."""
    try:
        require_backend(backend)
    except MissingDependencyError:
        return False
    return True


def require_backend(backend: str) -> None:
    """The missing-extra error naming ``flagstone[onnx]`` / ``flagstone[openvino]`` when its packages are absent
    (both export through torch's ONNX exporter, which needs onnx and onnxscript)."""
    # literal names: tests/test_extras.py checks every require_extra call against pyproject.toml's extras
    if backend == "onnx":
        require_extra("onnx", ("onnxruntime", "onnx", "onnxscript"), "the onnx backend needs")
    elif backend == "openvino":
        require_extra("openvino", ("openvino", "onnx", "onnxscript"), "the openvino backend needs")


def stored_weights(precision: str) -> str:
    """The weights an export stores for ``precision``; part of export and embedding-cache keys, so that a
    change of quantisation scheme (per-tensor int8 became per-channel) never reuses older files or vectors."""
    return "int8-per-channel" if precision == "int8" else "float32"


def export_key(fingerprint: str, backend: str, precision: str, settings: Mapping[str, Any]) -> str:
    """The folder name of an export: everything that changes the files written (OpenVINO compiles f32 or bf16
    from the same float32 files, so its precision is not part of the key)."""
    stored = stored_weights(precision)
    parts = {"format": EXPORT_FORMAT, "fingerprint": fingerprint, "backend": backend, "weights": stored,
             "settings": dict(settings)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def export_root() -> Path:
    return default_cache_dir() / "exports"


@dataclass
class CompiledModel:
    """An exported model loaded in ONNX Runtime or OpenVINO: ``run`` maps named int64 inputs to named outputs."""

    backend: str
    precision: str
    folder: Path
    exported_now: bool  # False when this load reused files exported earlier
    output_names: tuple[str, ...]
    _run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(inputs)


def compile_model(
    build_module: Callable[[], torch.nn.Module],
    example: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    *,
    backend: str,
    precision: str,
    fingerprint: str,
    settings: Mapping[str, Any],
    threads: int,
) -> CompiledModel:
    """Load the export of ``build_module()`` for ``backend`` / ``precision``, exporting it first if no export
    with the same key is on disk. ``example`` holds the inputs (all of shape (batch, seq)) the export traces
    with; ``settings`` is whatever the module bakes into the graph (pooling, normalisation, heads...)."""
    check_backend(backend, precision)
    if backend == "torch":
        raise BackendError("the torch backend runs the module itself; there is nothing to compile")
    require_backend(backend)
    folder = export_root() / export_key(fingerprint, backend, precision, settings)
    model_file = folder / ("model.xml" if backend == "openvino" else "model.onnx")
    exported_now = False
    if not model_file.is_file():
        with atomic_folder(folder, overwrite=True) as staging:
            _export(build_module(), example, output_names, staging, backend=backend, precision=precision)
            (staging / "export.json").write_text(json.dumps(
                {"fingerprint": fingerprint, "backend": backend, "precision": precision, "settings": dict(settings),
                 "format": EXPORT_FORMAT}, indent=1))
        exported_now = True
    if backend == "onnx":
        run = _onnxruntime_session(model_file, threads)
    else:
        run = _openvino_model(model_file, precision, threads)
    return CompiledModel(backend, precision, folder, exported_now, tuple(output_names), run)


def _export(module: torch.nn.Module, example: Mapping[str, torch.Tensor], output_names: Sequence[str],
            folder: Path, *, backend: str, precision: str) -> None:
    import torch

    names = list(example)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2)
    onnx_file = folder / ("float.onnx" if backend != "onnx" or precision == "int8" else "model.onnx")
    # the exporter reports progress on stdout and warns about internals we cannot act on; keep the user's
    # terminal to the one line that matters (an export takes a while once)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module.eval(), tuple(example[n] for n in names), dynamo=True, input_names=names,
            output_names=list(output_names), dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
            optimize=True, verbose=False)
        program.save(str(onnx_file))
    if backend == "onnx" and precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet():
            # one scale per output channel: per-tensor scales lost 0.0059 SciFact nDCG@10 on MiniLM (over the
            # 0.005 the project allows), per-channel ones none (README, "Inference backends")
            quantize_dynamic(str(onnx_file), str(folder / "model.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True)
        _remove_onnx(onnx_file)
    elif backend == "openvino":
        import openvino as ov

        # keep float32 weights: save_model's default would store them as float16
        ov.save_model(ov.convert_model(str(onnx_file)), str(folder / "model.xml"), compress_to_fp16=False)
        _remove_onnx(onnx_file)


@contextlib.contextmanager
def _quiet():
    """The exporter and the quantiser report progress on stdout and log warnings about their internals
    (torchvision absent, pre-processing advice) that a user cannot act on; an export happens once per model."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _remove_onnx(file: Path) -> None:
    """An intermediate ONNX file and its external-data file, if the exporter wrote one."""
    for path in file.parent.glob(file.name + "*"):
        path.unlink()


def _onnxruntime_session(model_file: Path, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as many as torch uses, so the backends compare like for like
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, inputs)))

    return run


def openvino_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _openvino_model(model_file: Path, precision: str, threads: int) -> Callable[[dict[str, np.ndarray]],
                                                                                 dict[str, np.ndarray]]:
    import openvino as ov

    core = ov.Core()
    if precision == "bfloat16" and not openvino_has_bf16():
        raise BackendError("openvino bfloat16 needs a CPU with bfloat16 instructions; this one has none "
                           "(use precision='float32')")
    hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
    # the precision hint is always set: left unset, OpenVINO computes in bf16 on CPUs that have it
    compiled = core.compile_model(core.read_model(str(model_file)), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    names = [out.get_any_name() for out in compiled.outputs]
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one request object: calls from several threads take turns

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with lock:
            result = request.infer(inputs)
            # copies: the request reuses its output buffers on the next call
            return {name: np.array(result[out]) for name, out in zip(names, compiled.outputs)}

    return run
