"""Fine-tuning the physically smaller model (acc.prune.shrink_phase) gives what masked fine-tuning
gives, for channel removals and for the column scheme's masks, and resumes to the uninterrupted
result. A small residual graph (graph_zoo 'residual': groups merged by Add, a projection shortcut)
on 256 demo images at 8x8: one ADMM epoch, two fine-tuning epochs.

"Up to float noise" holds where training is not chaotic. Measured on ResNet-20 just after a hard
prune at 2x (12 SGD steps at lr 0.05 on noise): a 1e-7 relative perturbation of the masked model
alone moved its outputs by 23 (of 28) in float32, while the masked and the small fine-tuning agreed
to 5e-12 (of 36) in float64: the same computation (acc.prune.shrink_phase says why), with float32
summation-order noise that a chaotic trajectory amplifies. Here they agree to about 1e-7."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from acc import api
from acc.errors import InputError
from acc.passes.verify import compare
from interrupt import killed_at_fine_tuning

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "data" / "cifar10_demo" / "train.jpeg.npz"
FAST = dict(epochs=1, admm_iters=2, finetune_epochs=2, limit=256, batch_size=64, progress=False, seed=0,
            log=lambda *a, **k: None)
TOLERANCE = 1e-4  # relative to the largest output, as verification uses


@pytest.fixture(scope="module")
def residual(zoo_path):
    return zoo_path("residual")


def _prune(model, scheme: str, small: bool, **kw):
    return api.prune(model, DEMO, uniform=0.5, scheme=scheme, finetune_small=small, **FAST, **kw)


@pytest.fixture(scope="module")
def filter_runs(residual):
    return {small: _prune(residual, "filter", small) for small in (True, False)}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same_result(small, masked):
    """Same channels removed, same columns zeroed, same outputs up to float noise, same history."""
    ws, wm = _weights(small.model), _weights(masked.model)
    assert ws.keys() == wm.keys()
    assert all(ws[k].shape == wm[k].shape for k in ws)
    assert all(np.array_equal(ws[k] == 0, wm[k] == 0) for k in ws if ws[k].dtype.kind == "f")
    for d in compare(masked.model, small.model, seed=3, samples=4):
        assert d.max_abs_error <= TOLERANCE * d.max_abs_output, d
    rows = ("group", "kept_by_hard_prune", "removed_near_zero", "removed_lossless", "width_after")
    assert [{k: g[k] for k in rows} for g in small.report["groups"]] == [{k: g[k] for k in rows} for g in masked.report["groups"]]
    hs, hm = small.report["history"], masked.report["history"]
    assert [h["phase"] for h in hs] == [h["phase"] for h in hm]
    for a, b in zip(hs, hm):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=TOLERANCE), (a, b)
    assert small.report["params"] == masked.report["params"]


def test_the_small_model_trains_and_ends_where_masked_fine_tuning_ends(filter_runs):
    small, masked = filter_runs[True], filter_runs[False]
    assert small.report["finetune"]["model"] == "small" and masked.report["finetune"]["model"] == "masked"
    # Half the channels of every group: about a quarter of the parameters train.
    assert small.report["finetune"]["trained_params"] < masked.report["finetune"]["trained_params"] / 2.5
    assert small.report["finetune"]["masked_entries"] == 0  # filter pruning leaves no mask on the small model
    _assert_same_result(small, masked)
    # The full-width masked model handed back is the masked run's, up to the same noise.
    assert _weights(small.masked).keys() == _weights(masked.masked).keys()
    for d in compare(masked.masked, small.masked, seed=3):
        assert d.max_abs_error <= TOLERANCE * d.max_abs_output
    assert all(d["max_abs_error"] <= TOLERANCE * d["max_abs_output"] + 1e-6 for d in small.report["verification"])


def test_column_masks_stay_masks_on_the_small_model(residual):
    small, masked = _prune(residual, "mixed", True), _prune(residual, "mixed", False)
    assert small.report["finetune"]["model"] == "small"
    assert small.report["finetune"]["masked_entries"] > 0  # zeroed columns inside kept channels
    assert small.report["finetune"]["trained_params"] < masked.report["finetune"]["trained_params"]
    _assert_same_result(small, masked)
    assert small.report["params"]["after_nonzero"] < small.report["params"]["after_dense"]


def test_resume_in_the_middle_of_small_fine_tuning_gives_the_uninterrupted_result(residual, filter_runs, tmp_path):
    out = tmp_path / "b.onnx"
    with killed_at_fine_tuning(epoch=2, step=2):
        _prune(residual, "filter", True, output=out)
    assert not out.exists() and Path(f"{out}.ckpt").exists()
    with pytest.raises(InputError, match="finetune-masked"):
        _prune(residual, "filter", False, output=out, resume=True)  # the checkpoint holds the small model
    resumed, whole = _prune(residual, "filter", True, output=out, resume=True), filter_runs[True]
    wr, ww = _weights(resumed.model), _weights(whole.model)
    assert wr.keys() == ww.keys() and all(np.array_equal(wr[k], ww[k]) for k in wr)
    assert resumed.report["history"] == whole.report["history"]
