"""ONNX Runtime and OpenVINO backends: float32 equals torch to 1e-5 on every output, exports are cached by key
and reused, bad settings and missing extras fail with one clear message."""
from __future__ import annotations

import shutil
import sys
import warnings

import numpy as np
import pytest

from flagstone.errors import BackendError, LossyPrecisionWarning, MissingDependencyError
from flagstone.models.embedder import Embedder
from flagstone.models.reranker import CrossEncoderReranker

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TEXTS = ["the zinc in the lozenge shortened colds", "", "short", "neutron stars spin " * 40,
         "a query about proteins and cells", "dup dup dup words words"]
EXPORTED = ("onnx", "openvino")


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """Every export of this module goes to a fresh cache folder (not the user's)."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("flagstone-cache")
    mp.setenv("FLAGSTONE_CACHE", str(folder))
    yield folder
    mp.undo()


def assert_same_outputs(got, want, tol: float = 1e-5) -> None:
    assert np.abs(got.dense - want.dense).max() <= tol
    if want.sparse is not None:
        # the same tokens get a weight (a weight within tol of zero could flip; the tiny model has none)
        assert np.array_equal(got.sparse.indptr, want.sparse.indptr)
        assert np.array_equal(got.sparse.token_ids, want.sparse.token_ids)
        assert np.abs(got.sparse.weights - want.sparse.weights).max() <= tol
        assert len(want.sparse.weights) > 0
    if want.colbert is not None:
        assert np.array_equal(got.colbert.offsets, want.colbert.offsets)
        assert np.abs(got.colbert.vectors - want.colbert.vectors).max() <= tol


@pytest.mark.parametrize("backend", EXPORTED)
def test_float32_backends_equal_torch_on_every_m3_output(tiny_m3, tiny_m3_dir, backend):
    want = tiny_m3.encode(TEXTS, dense=True, sparse=True, colbert=True)
    other = Embedder(str(tiny_m3_dir), backend=backend, precision="float32", show_progress=False)
    assert other.compiled is not None and other.compiled.output_names == ("dense", "sparse", "colbert")
    assert_same_outputs(other.encode(TEXTS, dense=True, sparse=True, colbert=True), want)
    # queries take the same path (the instruction is prepended before the graph)
    q_want = tiny_m3.encode_queries(TEXTS[:1], sparse=True, colbert=True)
    assert_same_outputs(other.encode_queries(TEXTS[:1], sparse=True, colbert=True), q_want)


@pytest.mark.parametrize("backend", EXPORTED)
def test_float32_backends_equal_torch_on_minilm(minilm, backend):
    other = Embedder(backend=backend, show_progress=False)
    assert other.compiled.output_names == ("dense",)
    got = other.encode(TEXTS)
    assert np.abs(got.dense - minilm.encode(TEXTS).dense).max() <= 1e-5


def test_reduced_precisions_are_close_but_not_equal(tiny_m3, tiny_m3_dir):
    from flagstone.models.backends import openvino_has_bf16

    want = tiny_m3.encode(TEXTS, sparse=True, colbert=True)
    runs = [("onnx", "int8"), ("torch", "bfloat16")] + ([("openvino", "bfloat16")] if openvino_has_bf16() else [])
    for backend, precision in runs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            embedder = Embedder(str(tiny_m3_dir), backend=backend, precision=precision, show_progress=False)
        # int8 says that its vectors are lossy; bfloat16 is an opt-in whose closeness the README gives
        assert [w.category for w in caught if issubclass(w.category, LossyPrecisionWarning)] == \
            ([LossyPrecisionWarning] if precision == "int8" else [])
        got = embedder.encode(TEXTS, sparse=True, colbert=True)
        cosine = np.sum(got.dense * want.dense, axis=1)
        assert cosine.min() > 0.98, (backend, precision)
        assert np.abs(got.dense - want.dense).max() > 1e-6, f"{backend} {precision} computed float32"


def test_the_second_load_reuses_the_export(tiny_m3_dir):
    first = Embedder(str(tiny_m3_dir), backend="onnx", show_progress=False)
    files = {f: f.stat().st_mtime_ns for f in first.compiled.folder.iterdir()}
    second = Embedder(str(tiny_m3_dir), backend="onnx", show_progress=False)
    assert second.compiled.folder == first.compiled.folder
    assert not second.compiled.exported_now
    assert {f: f.stat().st_mtime_ns for f in second.compiled.folder.iterdir()} == files
    # the export records what it was made from
    assert (first.compiled.folder / "export.json").is_file()
    assert (first.compiled.folder / "model.onnx").is_file()


def test_changed_weights_get_a_new_export(tiny_m3_dir, tmp_path):
    import torch

    model = shutil.copytree(tiny_m3_dir, tmp_path / "m3")
    before = Embedder(str(model), backend="onnx", show_progress=False)
    old = before.encode(TEXTS, sparse=True)
    state = torch.load(model / "sparse_linear.pt", weights_only=True)
    torch.save({k: v * 2 for k, v in state.items()}, model / "sparse_linear.pt")
    after = Embedder(str(model), backend="onnx", show_progress=False)
    assert after.compiled.folder != before.compiled.folder and after.compiled.exported_now
    new = after.encode(TEXTS, sparse=True)
    # relu(2 (wx + b)) = 2 relu(wx + b): the new export computes with the new head
    np.testing.assert_allclose(new.sparse.weights, 2 * old.sparse.weights, rtol=1e-5, atol=1e-6)
    torch_after = Embedder(str(model), show_progress=False).encode(TEXTS, sparse=True)
    assert np.abs(new.sparse.weights - torch_after.sparse.weights).max() <= 1e-5


def test_backend_settings_are_part_of_the_embedding_cache_key(tiny_m3, tiny_m3_dir):
    onnx = Embedder(str(tiny_m3_dir), backend="onnx", show_progress=False)
    assert onnx.cache_key(["dense"], False) != tiny_m3.cache_key(["dense"], False)
    assert onnx.settings.backend == "onnx" and onnx.settings.precision == "float32"


def test_the_stored_weights_are_part_of_the_embedding_cache_key(tiny_m3_dir, monkeypatch):
    """A new quantisation scheme (what stored_weights names) must never reuse vectors cached under the old one."""
    from flagstone.models import backends

    onnx = Embedder(str(tiny_m3_dir), backend="onnx", show_progress=False)
    before = onnx.cache_key(["dense"], False)
    monkeypatch.setattr(backends, "stored_weights", lambda precision: f"{precision}-another-scheme")
    assert onnx.cache_key(["dense"], False) != before


@pytest.mark.parametrize("backend, module", [("onnx", "onnxruntime"), ("openvino", "openvino"),
                                             ("openvino", "onnxscript")])
def test_backend_installed_looks_for_every_package_of_the_extra(monkeypatch, backend, module):
    from flagstone.models.backends import backend_installed
    from flagstone.server.settings import fastest_exact_backend

    assert backend_installed(backend) and backend_installed("torch")
    assert fastest_exact_backend() == "openvino"
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == module else object())
    assert not backend_installed(backend)
    assert backend_installed("torch")
    assert fastest_exact_backend() == ("torch" if module in ("openvino", "onnx", "onnxscript") else "openvino")


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tensorrt"}, "backend must be one of torch, onnx, openvino"),
    ({"precision": "float16"}, "precision must be one of float32, bfloat16, int8"),
    ({"backend": "onnx", "precision": "bfloat16"}, "backend 'onnx' offers precision float32 or int8"),
    ({"backend": "openvino", "precision": "int8"}, "backend 'openvino' offers precision float32 or bfloat16"),
    ({"backend": "torch", "precision": "int8"}, "backend 'torch' offers precision float32 or bfloat16"),
    ({"backend": "onnx", "dtype": "bfloat16"}, "leave dtype at float32"),
    ({"dtype": "bfloat16", "precision": "bfloat16"}, "leave dtype at float32"),
])
def test_bad_backend_settings(tiny_m3_dir, kwargs, message):
    with pytest.raises(BackendError, match=message):
        Embedder(str(tiny_m3_dir), show_progress=False, **kwargs)
    with pytest.raises(BackendError, match=message):
        CrossEncoderReranker(str(tiny_m3_dir), **kwargs)


@pytest.mark.parametrize("backend, module", [("onnx", "onnxruntime"), ("openvino", "openvino"),
                                             ("onnx", "onnxscript")])
def test_a_missing_backend_package_names_its_extra(tiny_m3_dir, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"{module}: pip install 'flagstone\[{backend}\]'"):
        Embedder(str(tiny_m3_dir), backend=backend, show_progress=False)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'flagstone\[{backend}\]'"):
        CrossEncoderReranker(str(tiny_m3_dir), backend=backend)


def test_an_exported_backend_refuses_to_back_propagate(tiny_m3_dir):
    import torch

    onnx = Embedder(str(tiny_m3_dir), backend="onnx", show_progress=False)
    ids, mask = onnx.pad(onnx.tokenize(["a text"]))
    with torch.enable_grad(), pytest.raises(BackendError, match="cannot back-propagate"):
        onnx.forward(ids, mask)


# each backend once and each head once (1 logit; 2 logits, yes/no): the score is taken from the logits in
# Python whatever ran the graph, and an export costs ~10 s on a shared 2-core CPU
@pytest.mark.parametrize("backend,labels", [("onnx", 2), ("openvino", 1)])
def test_cross_encoder_backends_equal_torch(tiny_cross_encoder_dir, tmp_path_factory, backend, labels):
    from tests.helpers import build_tiny_cross_encoder

    folder = tiny_cross_encoder_dir if labels == 1 else build_tiny_cross_encoder(
        tmp_path_factory.mktemp("ce2") / "reranker", num_labels=2)
    pairs = [("zinc colds", TEXTS[0]), ("stars", TEXTS[3]), ("empty passage", ""), ("proteins", TEXTS[4])]
    want = CrossEncoderReranker(folder, normalize=True).score_pairs(pairs)
    other = CrossEncoderReranker(folder, normalize=True, backend=backend)
    assert other.compiled is not None
    got = other.score_pairs(pairs)
    assert np.abs(got - want).max() <= 1e-5
    assert np.ptp(want) > 0  # the scores differ between pairs: the comparison is not of constants
