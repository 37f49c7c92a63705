"""The training recipe: labels + distillation objective, learning-rate schedules, weight decay on
kept weights, the proximal ADMM W-step and the --admm policy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acc import api
from acc.cli import main
from acc.errors import InputError
from acc.prune.objective import Objective, check_distillation, choose_supervision, distill_term
from acc.prune.schedule import MIN_ADMM_EPOCHS, choose_admm, decay_groups, lr_at, lr_for_rate

from onnx_export import export_legacy



class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(4, 6)

    def forward(self, x):
        return self.a(x), self.b(x).view(-1, 2, 3)


@torch.no_grad()
def test_labels_and_distillation_mix_by_the_weight():
    torch.manual_seed(0)
    teacher, student = TwoHeads(), TwoHeads()
    x, y = torch.randn(32, 4), torch.randint(0, 5, (32,))
    s, t = student(x), teacher(x)
    ce = float(F.cross_entropy(s[0], y))
    kl = float(distill_term(s[0], t[0], "logits", 4.0))
    assert kl > 0 and abs(ce - kl) > 0.01
    for a, expected in ((0.0, ce), (0.3, 0.7 * ce + 0.3 * kl), (1.0, kl)):
        terms = Objective(teacher, use_labels=True, distill_weight=a).terms(s, x, y)
        assert float(terms[0]) == pytest.approx(expected, rel=1e-5)
        # the other output is distilled whatever the weight (as before)
        assert float(terms[1]) == pytest.approx(float(distill_term(s[1], t[1], "values", 4.0)), rel=1e-5)
    # The temperature softens the KL term: T^2 * KL(softmax(t/T) || softmax(s/T)).
    t2 = Objective(teacher, use_labels=True, distill_weight=1.0, temperature=2.0).terms(s, x, y)[0]
    expected = F.kl_div(F.log_softmax(s[0] / 2, 1), F.softmax(t[0] / 2, 1), reduction="batchmean") * 4
    assert float(t2) == pytest.approx(float(expected), rel=1e-5)


def test_mixing_needs_the_teacher_and_bad_weights_are_refused():
    assert choose_supervision(["logits"], True, None, 0.0) == (True, False)
    assert choose_supervision(["logits"], True, None, 0.5) == (True, True)
    assert choose_supervision(["logits"], False, None, 0.5) == (False, True)
    for a, t in ((-0.1, 4.0), (1.5, 4.0), (0.5, 0.0), (0.5, -1.0)):
        with pytest.raises(InputError):
            check_distillation(a, t)
    check_distillation(0.0, 1.0)
    check_distillation(1.0, 0.5)


def test_schedules():
    total = 100
    cos = [lr_at("cosine", 1.0, i, total, warmup=0.1) for i in range(total)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0) and max(cos) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[9:], cos[10:])) and cos[-1] < 1e-3
    assert lr_at("cosine", 1.0, 0, total) == 1.0  # no warm-up: the cosine of before
    one = [lr_at("onecycle", 1.0, i, total) for i in range(total)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(max(one)) == 30
    assert one[-1] < 1e-3
    rew = [lr_at("rewind", 1.0, i, total) for i in range(total)]
    assert rew[:50] == [1.0] * 50 and rew[50:75] == [0.1] * 25 and rew[75:] == [0.01] * 25
    with pytest.raises(ValueError):
        lr_at("linear", 1.0, 0, total)


def test_decay_groups_leave_norm_and_bias_out_when_asked():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert len(decay_groups(net, 5e-4)) == 1
    decayed, plain = decay_groups(net, 5e-4, decay_norm_and_bias=False)
    assert {p.dim() for p in decayed["params"]} == {2, 4} and decayed["weight_decay"] == 5e-4
    assert {p.dim() for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))


def test_admm_policy():
    short = choose_admm("auto", MIN_ADMM_EPOCHS - 1, 3)
    assert short["method"] == "one-shot" and short["admm_epochs"] == 0 and short["finetune_epochs"] == MIN_ADMM_EPOCHS + 2
    assert "too short" in short["reason"]
    long = choose_admm("auto", MIN_ADMM_EPOCHS, 3)
    assert long["method"] == "admm" and long["admm_epochs"] == MIN_ADMM_EPOCHS
    assert choose_admm("on", 1, 1)["method"] == "admm"
    off = choose_admm("off", 5, 5)
    assert off["method"] == "one-shot" and (off["admm_epochs"], off["finetune_epochs"]) == (0, 10)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return export_legacy(TinyCNN(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", (1, 3, 32, 32))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """192 labelled random images: the runs below test mechanics, not accuracy (and decode nothing)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, inputs=rng.standard_normal((192, 3, 32, 32)).astype(np.float32),
             labels=rng.integers(0, 10, 192).astype(np.int64))
    return path


FAST = dict(batch_size=32, progress=False, purify=False, log=lambda *a: None)


def test_proximal_admm_reaches_the_structure_and_the_hard_prune_is_recorded(tiny, data):
    r = api.prune(tiny, data, uniform=0.5, epochs=2, finetune_epochs=1, admm="on", admm_iters=6, lr=0.05, **FAST).report
    cut = next(h for h in r["history"] if h["phase"] == "hard_prune")
    assert {"val_loss_before", "val_loss_after", "val_accuracy_before", "val_accuracy_after"} <= set(cut)
    start = r["admm_distance_to_structure"][0]
    # auto rho pulls the removed weights most of the way (e^-4 of them if the loss did not resist)
    assert cut["distance_to_structure"] < 0.25 * start
    assert r["admm_choice"]["method"] == "admm" and "distillation" in r["objective"]


def test_auto_admm_falls_back_to_one_shot_and_says_so(tiny, data):
    lines = []
    assert MIN_ADMM_EPOCHS > 1
    r = api.prune(tiny, data, uniform=0.5, epochs=1, finetune_epochs=1, schedule="onecycle",
                  **{**FAST, "log": lines.append}).report
    assert r["admm_choice"]["method"] == "one-shot" and len(lines) == 1 and "one-shot" in lines[0]
    assert r["train_config"]["admm_epochs"] == 0 and r["train_config"]["finetune_epochs"] == 2
    assert [h["phase"] for h in r["history"]][:1] == ["hard_prune"]


@pytest.mark.parametrize("command", ["prune", "compile"])
@pytest.mark.parametrize("args", [["--distill-weight", "1.5"], ["--distill-weight", "-0.2"], ["--temperature", "0"],
                                  ["--feature-distill", "-1"], ["--feature-distill", "11"]])
def test_bad_recipe_options_are_one_line_errors(tiny, data, tmp_path, capsys, command, args):
    out = tmp_path / "o.onnx"
    how = ["--uniform", "0.5"] if command == "prune" else ["--rate", "2x"]
    code = main([command, str(tiny), "--data", str(data), "-o", str(out), "--no-progress"] + how + args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("keep_best", [True, False])
def test_fine_tuning_ends_on_its_best_validated_state(tiny, data, keep_best):
    """A learning rate that wrecks the model: with keep_best (the default) the run ends on the cut
    as recovered, the lowest validation loss it saw, and says so; without, on the wrecked last epoch."""
    r = api.prune(tiny, data, uniform=0.5, epochs=0, finetune_epochs=2, admm="off", finetune_lr=50.0,
                  recover_cut=64, keep_best=keep_best, **FAST).report
    history = r["history"]
    cut = next(h for h in history if h["phase"] == "hard_prune")
    epochs = [h for h in history if h["phase"] == "finetune"]
    assert min(h["val_loss"] for h in epochs) > cut["val_loss_recovered"]  # fine-tuning only made it worse
    final = r["accuracy_after"]["val"]["loss"]
    if keep_best:
        assert [h for h in history if h["phase"] == "keep_best"] == [
            {"phase": "keep_best", "epoch": 0, "val_loss": cut["val_loss_recovered"], "val_loss_last": epochs[-1]["val_loss"]}]
        assert final == pytest.approx(cut["val_loss_recovered"], rel=1e-4)
    else:
        assert not any(h["phase"] == "keep_best" for h in history)
        assert final == pytest.approx(epochs[-1]["val_loss"], rel=1e-4)


def test_cli_last_epoch_ends_fine_tuning_on_its_last_epoch(tiny, data, tmp_path):
    """--last-epoch reaches the trainer: with a wrecking learning rate, no keep_best record; without
    the flag, there is one."""
    import json

    report = tmp_path / "r.json"
    args = ["prune", str(tiny), "--data", str(data), "--uniform", "0.5", "-o", str(tmp_path / "o.onnx"), "--epochs", "0",
            "--finetune-epochs", "2", "--admm", "off", "--finetune-lr", "50", "--recover-cut", "64",
            "--batch-size", "32", "--no-progress", "--report", str(report)]
    for flag, kept in (["--last-epoch"], False), ([], True):
        assert main(args + flag) == 0
        assert any(h["phase"] == "keep_best" for h in json.loads(report.read_text())["history"]) == kept


def test_compile_learning_rate_follows_the_rate():
    assert [lr_for_rate(r) for r in (1.2, 2, 3, 4, 8, 16, 60)] == pytest.approx([0.01, 0.01, 0.015, 0.02, 0.04, 0.04, 0.04])


@pytest.mark.parametrize("flag, lr", [([], 0.02), (["--lr", "0.005"], 0.005)])
def test_compile_trains_at_the_rate_s_learning_rate_unless_told(tiny, data, tmp_path, monkeypatch, flag, lr):
    import acc.autocompress

    class Reached(Exception):
        pass

    seen = {}

    def run_round(k, current, original_path, data, goal, options, *args, **kwargs):
        seen["lr"] = options.lr
        raise Reached

    monkeypatch.setattr(acc.autocompress, "_run_round", run_round)
    with pytest.raises(Reached):
        main(["compile", str(tiny), "--rate", "4x", "--data", str(data), "-o", str(tmp_path / "out"), "--no-progress", *flag])
    assert seen["lr"] == pytest.approx(lr)


@pytest.mark.parametrize("value", ["0", "-0.1"])
def test_compile_refuses_a_learning_rate_that_is_not_positive(tiny, data, tmp_path, capsys, value):
    out = tmp_path / "out"
    code = main(["compile", str(tiny), "--data", str(data), "-o", str(out), "--no-progress", "--rate", "2x", "--lr", value])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--lr" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flag, keep_best", [(["--last-epoch"], False), ([], True)])
def test_compile_passes_last_epoch_to_every_round(tiny, data, tmp_path, monkeypatch, flag, keep_best):
    import acc.autocompress

    class Reached(Exception):
        pass

    seen = {}

    def compile_model(model, data, output, options, log):
        seen["keep_best"] = options.keep_best
        raise Reached

    monkeypatch.setattr(acc.autocompress, "compile_model", compile_model)
    with pytest.raises(Reached):
        main(["compile", str(tiny), "--rate", "1.5x", "--data", str(data), "-o", str(tmp_path / "out"), "--no-progress", *flag])
    assert seen == {"keep_best": keep_best}


def _refuse(constant):
    raise AssertionError(f"report.json is not strict JSON: {constant}")


def _diverging_run(tiny, data, tmp_path=None, **kw):
    """Fine-tuning at a learning rate that blows the tiny model up (losses of 1e7 and more)."""
    lines = []
    args = dict(uniform=0.5, epochs=0, finetune_epochs=2, admm="off", finetune_lr=50.0, recover_cut=64,
                **{**FAST, "log": lines.append})
    if tmp_path is not None:
        args["output"] = tmp_path / "o.onnx"
    return api.prune(tiny, data, **{**args, **kw}), lines


def test_a_diverged_epoch_is_redone_at_half_the_learning_rate(tiny, data, tmp_path):
    import math

    from acc.prune.admm import DIVERGED_FACTOR

    result, lines = _diverging_run(tiny, data, tmp_path, report=tmp_path / "r.json")
    history = json.loads((tmp_path / "r.json").read_text(), parse_constant=_refuse)["history"]
    diverged = [h for h in history if h["phase"] == "diverged"]
    epochs = [h for h in history if h["phase"] == "finetune"]
    assert diverged and all(h["in"] == "finetune" and h["epoch"] == 1 for h in diverged)
    assert [h["lr_scale"] for h in diverged] == [0.5 ** i for i in range(len(diverged))]
    # Every epoch ran to the end at the rate it settled on, with finite, sane losses.
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert all(math.isfinite(h["val_loss"]) and h["val_loss"] < DIVERGED_FACTOR for h in epochs)
    assert len(lines) == len(diverged) and "diverged at learning rate 50 " in lines[0] and "half" in lines[0]
    assert all(np.isfinite(onnx.numpy_helper.to_array(t)).all() for t in result.model.graph.initializer)


@pytest.mark.parametrize("admm", ["off", "on"])
def test_a_phase_that_diverges_at_every_rate_ends_where_it_was(tiny, data, admm, tmp_path):
    """At 1e12 every halving still blows up: after MAX_BACKOFFS the phase gives up its epochs. Fine-tuning
    ends on the cut as recovered (keep_best); an ADMM phase goes on to the cut from its last sane state."""
    from acc.prune.admm import MAX_BACKOFFS

    finetune_lr = 1e12 if admm == "off" else 0.01  # with ADMM on, only ADMM blows up
    result, _ = _diverging_run(tiny, data, finetune_lr=finetune_lr, lr=1e12, admm=admm, epochs=2 if admm == "on" else 0,
                               report=tmp_path / "r.json")
    history = result.report["history"]
    assert any(h["phase"] == "diverged" and h["train_loss"] != h["train_loss"] for h in history)  # NaN losses
    strict = json.loads((tmp_path / "r.json").read_text(), parse_constant=_refuse)  # written as 'nan': strict JSON
    assert "nan" in [h.get("train_loss") for h in strict["history"]]
    diverged = [h for h in history if h["phase"] == "diverged"]
    assert len(diverged) == MAX_BACKOFFS + 1 and diverged[-1]["action"] == "phase ended"
    assert [h["in"] for h in diverged] == [admm == "on" and "admm" or "finetune"] * len(diverged)
    cut = next(h for h in history if h["phase"] == "hard_prune")
    if admm == "off":
        assert not any(h["phase"] == "finetune" for h in history)
        assert result.report["accuracy_after"]["val"]["loss"] == pytest.approx(cut["val_loss_recovered"], rel=1e-4)
    else:  # the cut starts from the original's weights: nothing of the blown-up epochs is left
        assert not any(h["phase"] == "admm" for h in history) and cut["val_loss_before"] < 10
        assert [h["epoch"] for h in history if h["phase"] == "finetune"] == [1, 2]  # at the halved rate


def test_a_run_resumed_after_a_back_off_matches_an_uninterrupted_one(tiny, data, tmp_path, monkeypatch):
    """The halved learning rate is in the checkpoint: killed in the redone epoch, the resumed run
    ends bit for bit where the uninterrupted one does."""
    from acc.prune import pipeline

    for run in "ab":
        (tmp_path / run).mkdir()
    a, _ = _diverging_run(tiny, data, tmp_path / "a")
    original = pipeline._Progress.__call__

    def interrupt(self, **kw):
        if kw["phase"] == "fine-tune" and kw["epoch"] == 2 and kw["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Progress, "__call__", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _diverging_run(tiny, data, tmp_path / "b")
    monkeypatch.setattr(pipeline._Progress, "__call__", original)
    b, _ = _diverging_run(tiny, data, tmp_path / "b", resume=True)
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.model.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.model.graph.initializer}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.report["history"] == b.report["history"] and any(h["phase"] == "diverged" for h in b.report["history"])
