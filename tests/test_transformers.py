"""Transformer encoders (models/vit.py, models/bert_tiny.py, a timm-style fused-qkv ViT): the MLP
hidden widths and whole attention heads are prunable groups, the residual stream is a boundary
unless asked for, and `--ratio` shrinking gives smaller graphs verified in onnxruntime, from both
exporters. Tiny random-weight models, so each test takes seconds."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from acc import cli
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.passes.shrink import shrink
from models.bert_tiny import bert_tiny
from models.vit import Attention, vit

DIM, HEADS, DEPTH, MLP_RATIO = 24, 3, 2, 2
TOKENS = (16 // 4) ** 2 + 1


class TimmAttention(nn.Module):
    """timm's form: one q/k/v Linear, reshaped to [B, N, 3, heads, head_dim] and permuted."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Features(nn.Module):
    """A ViT with no classifier: its output is the encoder's sequence of token features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        x = m.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + m.pos_embed
        for block in m.blocks:
            x = block(x)
        return m.norm(x)


class HeadSoftmaxAttention(Attention):
    """Not attention acc knows: the softmax runs across the heads, mixing them."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        attn = (q @ k.transpose(-2, -1)).softmax(dim=1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def _vit(attention=None, sdpa=False):
    torch.manual_seed(0)
    model = vit(image=16, dim=DIM, depth=DEPTH, heads=HEADS, mlp_ratio=MLP_RATIO, sdpa=sdpa)
    if attention is not None:
        for block in model.blocks:
            block.attn = attention(DIM, HEADS)
    _randomize_norms(model)
    return model, torch.randn(1, 3, 16, 16)


def _bert(num_classes=4, sdpa=False):
    torch.manual_seed(0)
    model = bert_tiny(vocab=50, length=8, dim=32, heads=2, hidden=64, num_classes=num_classes, sdpa=sdpa)
    _randomize_norms(model)
    return model, torch.randint(0, 50, (1, 8))


def _randomize_norms(model):
    # Trained LayerNorms are not ones and zeros: a wrong slice must show in the outputs.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))


BUILDERS = {
    "vit": lambda: _vit(),
    "vit_sdpa": lambda: _vit(sdpa=True),
    "vit_timm": lambda: _vit(TimmAttention),
    "vit_head_softmax": lambda: _vit(HeadSoftmaxAttention),
    "vit_features": lambda: (Features(_vit()[0]), torch.randn(1, 3, 16, 16)),
    "bert": lambda: _bert(),
    "bert_sdpa": lambda: _bert(sdpa=True),
    "bert_features": lambda: _bert(num_classes=None),
}


def _export(module, sample, path, dynamo, opset=17):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"dynamo": True, "verbose": False} if dynamo else {
            "opset_version": opset, "do_constant_folding": False, "dynamo": False}
        torch.onnx.export(module.eval(), (sample,), str(path), input_names=["input"], output_names=["out"], **options)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transformers")
    cache = {}

    def get(name, dynamo=False, opset=17):
        key = (name, dynamo, opset)
        if key not in cache:
            module, sample = BUILDERS[name]()
            sub = folder / f"{name}_{'dynamo' if dynamo else 'legacy'}_{opset}"
            sub.mkdir()
            cache[key] = _export(module, sample, sub / "model.onnx", dynamo, opset)
        return cache[key]

    return get


def _groups(path, prune_embedding=False):
    return analyze(import_model(path), prune_embedding=prune_embedding).groups


# Both exporters; the hand-written matmul-softmax-matmul, an SDPA lowering, timm's fused q/k/v.
CASES = [
    pytest.param("vit", False, DIM * MLP_RATIO, HEADS, id="vit-legacy"),
    pytest.param("vit_sdpa", True, DIM * MLP_RATIO, HEADS, id="vit-sdpa-dynamo"),
    pytest.param("vit_timm", False, DIM * MLP_RATIO, HEADS, id="vit-timm-legacy"),
    pytest.param("bert", True, 64, 2, id="bert-dynamo"),
    pytest.param("bert_sdpa", False, 64, 2, id="bert-sdpa-legacy"),
]


@pytest.mark.parametrize("name, dynamo, mlp, heads", CASES)
def test_mlp_widths_and_whole_heads_are_prunable_groups(exported, name, dynamo, mlp, heads):
    groups = _groups(exported(name, dynamo))
    prunable = [g for g in groups if not g.is_boundary]
    mlp_groups = [g for g in prunable if g.unit == "channel"]
    head_groups = [g for g in prunable if g.unit == "head"]
    pooler = [32] if name.startswith("bert") else []  # BERT's pooler Linear + tanh is a group too
    assert [g.width for g in mlp_groups] == [mlp] * 2 + pooler
    assert [g.width for g in head_groups] == [heads] * 2
    assert all(len(g.prunable) == g.width for g in prunable)
    # The residual stream is a group of its own, frozen with the reason and the option to ask for it.
    stream = [g for g in groups if g.is_boundary and any("--prune-embedding" in (f or "") for f in g.frozen)]
    assert len(stream) == 1


@pytest.mark.parametrize("name, dynamo, mlp, heads", CASES)
def test_ratio_shrink_removes_heads_and_mlp_width_verified(exported, name, dynamo, mlp, heads):
    result = shrink(exported(name, dynamo), ratio=0.5)  # raises unless onnxruntime verifies it
    widths = {r["group"]: (r["width_before"], r["width_after"]) for r in result.group_rows()}
    head_groups = [g for g in result.analysis.groups if g.unit == "head"]
    kept_heads = heads - int(round(0.5 * heads))
    assert all(widths[g.name] == (heads, kept_heads) for g in head_groups)
    assert result.after.params < 0.65 * result.before.params
    # Physically smaller: every projection that writes heads lost whole heads' rows.
    head_dim = {2: 16, 3: DIM // HEADS}[heads]
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    before = {t.name: tuple(t.dims) for t in result.analysis.model.graph.initializer}
    shrunk_axes = [b[i] - shapes[n][i] for n, b in before.items() if n in shapes
                   for i in range(len(b)) if b[i] != shapes[n][i]]
    assert (heads - kept_heads) * head_dim in shrunk_axes or 3 * (heads - kept_heads) * head_dim in shrunk_axes
    assert max(d.max_abs_error for d in result.diffs) <= 1e-4 * max(d.max_abs_output for d in result.diffs)


def test_shrunk_heads_match_the_masked_torch_model(exported):
    """Beyond onnxruntime against the masked graph: removing two heads in torch by hand gives the
    same logits as the shrunk graph (the plan names which heads went)."""
    path = exported("vit", False)
    result = shrink(path, ratio=0.5)
    module, sample = _vit()
    per_head = DIM // HEADS
    with torch.no_grad():
        for i, group in enumerate(g for g in result.analysis.groups if g.unit == "head"):
            kept = result.plan.keep[group.name]
            attn = module.blocks[i].attn
            for h in range(HEADS):
                if h not in kept:
                    rows = slice(h * per_head, (h + 1) * per_head)
                    for lin in (attn.q, attn.k, attn.v):
                        lin.weight[rows] = 0
                        lin.bias[rows] = 0
                    attn.proj.weight[:, rows] = 0
        for i, group in enumerate(g for g in result.analysis.groups if g.unit == "channel" and not g.is_boundary):
            kept = result.plan.keep[group.name]
            mlp = module.blocks[i].mlp
            gone = [j for j in range(mlp.fc1.out_features) if j not in kept]
            mlp.fc1.weight[gone] = 0
            mlp.fc1.bias[gone] = 0
            mlp.fc2.weight[:, gone] = 0
        expected = module.eval()(sample).numpy()
    import onnxruntime as ort

    got = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": sample.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, dynamo, opset", [
    pytest.param("vit", False, 17, id="vit-legacy-layernorm"),
    pytest.param("vit_timm", True, 17, id="vit-timm-dynamo"),
    pytest.param("vit", False, 16, id="vit-legacy-decomposed-layernorm"),
    pytest.param("bert", False, 17, id="bert-legacy-embedding-table"),
])
def test_prune_embedding_narrows_the_residual_stream_verified(exported, name, dynamo, opset):
    path = exported(name, dynamo, opset)
    if opset == 16:
        ops = {n.op_type for n in import_model(path).graph.node}
        assert "LayerNormalization" not in ops and "ReduceMean" in ops
    frozen = [g for g in _groups(path) if any("--prune-embedding" in (f or "") for f in g.frozen)]
    assert len(frozen) == 1 and frozen[0].is_boundary
    result = shrink(path, ratio=0.5, prune_embedding=True)
    width = frozen[0].width
    row = next(r for r in result.group_rows() if r["group"] == frozen[0].name)
    assert (row["width_before"], row["width_after"]) == (width, width // 2)
    shapes = [tuple(t.dims) for t in result.model.graph.initializer]
    if name.startswith("vit"):
        assert (1, 1, width // 2) in shapes  # the class token follows the stream
        assert (1, TOKENS, width // 2) in shapes  # and the positional embedding
    else:
        assert (50, width // 2) in shapes  # the token embedding table's columns
    if opset == 17:
        assert shapes.count((width // 2,)) >= 2  # LayerNorm scale and bias
    assert result.after.params < 0.35 * result.before.params


def test_sequence_features_output_keeps_the_stream_even_when_asked(exported):
    path = exported("bert_features", False)
    groups = _groups(path, prune_embedding=True)
    stream = [g for g in groups if g.width == 32 and g.unit == "channel"]
    assert stream and all(g.is_boundary for g in stream)
    assert any("reaches graph output 'out'" in (f or "") for f in stream[0].frozen)
    result = shrink(path, ratio=0.5, prune_embedding=True)
    assert result.model.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 32


def test_unrecognised_attention_is_a_boundary_with_its_reason(exported, capsys):
    path = exported("vit_head_softmax", False)
    groups = _groups(path)
    assert not [g for g in groups if g.unit == "head" and not g.is_boundary]
    assert len([g for g in groups if not g.is_boundary]) == 2  # the MLPs only
    assert cli.main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Softmax" in out and "normalises across channels" in out
    shrink(path, ratio=0.5)  # the MLPs still shrink, verified


def test_verification_failure_is_one_line_exit_3(exported, tmp_path, monkeypatch, capsys):
    """A rewrite that leaves the class token at its old width (the old failure: onnxruntime cannot
    load the Concat), and one that computes something else: one line each, exit 3, nothing written."""
    import acc.passes.shrink as shrink_module

    real = shrink_module.rewrite

    def stale_class_token(analysis, plan):
        model = real(analysis, plan)
        for t in model.graph.initializer:
            if tuple(t.dims[:2]) == (1, 1) and len(t.dims) == 3:
                t.CopyFrom(numpy_helper.from_array(np.zeros((1, 1, DIM), np.float32), t.name))
        return model

    def perturbed(analysis, plan):
        model = real(analysis, plan)
        t = next(t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] > 1 and t.dims[1] > 1)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
        return model

    path = exported("vit", False)
    for broken, expected in ((stale_class_token, "cannot be run by onnxruntime"), (perturbed, "differs")):
        monkeypatch.setattr(shrink_module, "rewrite", broken)
        out = tmp_path / f"{broken.__name__}.onnx"
        code = cli.main(["shrink", str(path), "-o", str(out), "--ratio", "0.5", "--prune-embedding"])
        err = capsys.readouterr().err
        assert code == 3
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("acc shrink: error: ") and expected in err and "'out'" in err
        assert not out.exists()


def test_cli_prune_embedding_flag_writes_a_smaller_model(exported, tmp_path, capsys):
    path = exported("vit", False)
    out = tmp_path / "small.onnx"
    assert cli.main(["shrink", str(path), "-o", str(out), "--ratio", "0.5", "--prune-embedding"]) == 0
    assert "verified in onnxruntime" in capsys.readouterr().out
    small = onnx.load(str(out))
    assert sum(numpy_helper.to_array(t).size for t in small.graph.initializer) < 0.35 * sum(
        numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("name, dynamo", [("vit", False), ("vit_timm", True), ("vit_sdpa", True), ("bert", False)])
def test_bridge_runs_the_encoder_at_a_training_batch(exported, name, dynamo):
    """The torch bridge (what `acc prune` trains) computes the exported model at a batch other than
    the import's 1: the class token, folded at batch 1, is broadcast to the batch again."""
    from acc.prune.bridge import TorchModel

    module, sample = BUILDERS[name]()
    batch = torch.cat([sample] * 3) if name.startswith("bert") else torch.randn(3, *sample.shape[1:])
    converted = TorchModel(import_model(exported(name, dynamo))).module
    with torch.no_grad():
        np.testing.assert_allclose(converted(batch).numpy(), module.eval()(batch).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, dynamo", [("vit", False), ("vit_timm", False), ("vit_timm", True)])
def test_a_model_pruned_to_one_head_keeps_its_head_groups(exported, name, dynamo):
    """Shrunk to one head per block, the reshape into [.., 1, head_dim] is still the head split (not
    an unsqueeze), so a second shrink sees the same groups and can still narrow the stream."""
    first = shrink(exported(name, dynamo), ratio=0.7)
    groups = analyze(import_model(first.model), prune_embedding=True).groups
    assert [g.width for g in groups if g.unit == "head"] == [1] * DEPTH
    second = shrink(first.model, ratio=0.5, prune_embedding=True)
    stream = next(r for r in second.group_rows() if r["width_before"] == DIM)
    assert stream["width_after"] == DIM // 2


@pytest.mark.parametrize("dynamo", [False, True])
def test_shrunk_vit_builds_with_tvm_and_matches_onnxruntime(exported, tmp_path, dynamo):
    """The last stage takes what the head/MLP rewrite makes: TVM (host) computes what onnxruntime does."""
    import onnxruntime as ort

    from acc.backends.compile import build
    from acc.backends.timing import TvmRunner

    result = shrink(exported("vit", dynamo), ratio=0.5)
    small = tmp_path / "vit_small.onnx"
    onnx.save(result.model, small)
    built = build(small, "host", tmp_path / "vit_small.so", log=lambda message: None)
    sess = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in feed.shape]).astype(np.float32)
    runner = TvmRunner(str(built.library))
    runner.set_inputs([x])
    np.testing.assert_allclose(runner.outputs()[0], sess.run(None, {feed.name: x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True])
def test_cost_model_counts_attention_matmuls_by_kept_heads(exported, dynamo):
    """q@k^T and p@v carry no weight: their MACs must still shrink with the heads the search removes,
    or a FLOPs target over-prunes everything else."""
    from acc.passes.counting import count
    from acc.prune.cost import CostModel

    path = exported("vit", dynamo)
    result = shrink(path, ratio=0.5)
    cost = CostModel(result.analysis)
    predicted = cost.flops(np.full(cost.size, 0.5))
    actual = count(result.model).flops
    assert any(g.unit == "head" for g in result.analysis.prunable_groups)
    assert abs(predicted - actual) <= 0.01 * actual, (predicted, actual)


@pytest.mark.parametrize("name, dynamo", [("vit", False), ("vit_sdpa", True)])
def test_refit_solves_each_matmul_linear_with_its_bias(exported, name, dynamo):
    """The refit after a cut covers a transformer's Linears as exported (x @ W, then Add of a constant
    bias): the MLP's second layer and the attention output projection read pruned channels and are
    solved, weight and bias together, towards the original's outputs."""
    from acc.passes.mask import masked_model
    from acc.passes.oneshot import ratio_plan
    from acc.prune.bridge import TorchModel
    from acc.prune.posttrain.refit import layers_to_refit, refit
    from acc.data.tensor_data import TensorData

    model = import_model(exported(name, dynamo))
    analysis = analyze(model)
    plan = ratio_plan(analysis, 0.5)
    bridge, original = TorchModel(masked_model(analysis, plan)), TorchModel(model)
    layers = layers_to_refit(analysis, plan, bridge, original)
    matmuls = [layer for layer in layers if layer.kind == "matmul"]
    assert len(matmuls) == 2 * DEPTH and all(layer.skip is None and layer.bias_view is not None for layer in matmuls)

    def images(n, seed):
        return TensorData(torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))

    unseen = images(64, 9)

    @torch.no_grad()
    def distance():
        return sum(float((bridge.module(x) - original.module(x)).pow(2).sum()) for x, _ in unseen.batches(64))

    before = distance()
    records = refit(layers, bridge.module, original.module, images(256, 1), images(64, 2))
    assert all(r["refitted"] for r in records if r["kind"] == "matmul")
    assert distance() < 0.5 * before
    for layer in matmuls:  # removed input rows of the [in, out] weight stay zero
        removed = torch.ones(layer.weight_view.tensor.shape[0], dtype=torch.bool)
        removed[layer.kept_in] = False
        assert float(layer.weight_view.tensor.detach()[removed].abs().sum()) == 0.0


def test_encoder_without_classifier_is_pruned_by_distilling_its_output(exported, tmp_path):
    """No classifier and no labels: acc prune distils the encoder's token features, the cut is
    refitted (MatMul Linears included), and the smaller graph is verified against the masked model."""
    from acc import api

    data = tmp_path / "images.npz"
    np.savez(data, inputs=np.random.default_rng(0).standard_normal((192, 3, 16, 16)).astype(np.float32))
    result = api.prune(exported("vit_features", False), data, tmp_path / "small.onnx", uniform=0.5, epochs=2,
                       admm="off", finetune_epochs=2, batch_size=32, progress=False, log=lambda *a, **k: None)
    report = result.report
    assert report["objective"].startswith("distillation")
    cut = next(r for r in report["history"] if r["phase"] == "hard_prune")
    assert cut["recovery"]["refitted_layers"] == cut["recovery"]["layers"] == 2 * DEPTH
    assert cut["val_loss_recovered"] < 0.5 * cut["val_loss_after"]
    last = [r for r in report["history"] if r["phase"] == "finetune"][-1]
    assert last["val_loss"] <= cut["val_loss_recovered"]
    assert report["params"]["reduction_dense"] > 1.5
    assert onnx.load(tmp_path / "small.onnx").graph.output[0].type.tensor_type.shape.dim[2].dim_value == DIM
