"""Which channels to remove when nothing will be trained: the ones whose loss the next layers can
best make up for (ThiNet, Luo et al. 2017; the block form of Optimal Brain Surgeon).

A channel of a group is read by the conv/Gemm layers after it (its consumers). With the layer
refitted by least squares afterwards (refit.py), what removing a set of channels costs is the
increase of each consumer's least-squares residual when their input columns are dropped. For
one consumer with normal equations A = X^T X (+ ridge), B = X^T Y, P = A^-1 and LS solution
W = P B, dropping the columns S (a channel's taps) raises the residual by

    dE(S) = tr(W_S^T (P_SS)^-1 W_S),

and after the drop P and W are updated in closed form (Schur complement):
P <- P_RR - P_RS P_SS^-1 P_SR, W <- W_R - P_RS P_SS^-1 W_S. Greedy backward elimination, one
channel at a time, the one with the smallest summed dE over the group's consumers (each relative
to its consumer's output energy), orders the channels of the group: the order in which they are
eliminated is their ranking, so every rate takes a prefix of it. Computed once per group on the
original model (its own inputs and outputs), before the allocation search.

L1 is what the trained pipeline uses: there the training moves the weights afterwards. Without
training, a channel with a large L1 norm may be one the next layer can rebuild from the others,
and a small one may be irreplaceable; the residual says which.

Groups with no consumer that can be measured (read only by grouped convs, MatMul between two
activations, a graph output, or a consumer with more than MAX_UNKNOWNS unknowns, whose K x K matrix
would not fit) keep L1. A MatMul with a constant weight (a transformer's Linear) is measured as the
refit solves it, its following bias included.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from acc.passes.analysis import Analysis
from acc.passes.channels import IN_WEIGHT
from acc.prune.bridge import TorchModel
from acc.prune.posttrain.normal_equations import NormalEquations
from acc.prune.posttrain.refit import BATCH, RefitLayer, capture_pair, layer_kind, matmul_layer, rows_of, taps, unknowns

MAX_UNKNOWNS = 5000  # a consumer's K x K float64 normal matrix: 200 MB at this size
RIDGE = 1e-4  # relative to the mean diagonal: keeps A invertible where channels are collinear
ROWS_PER_UNKNOWN = 16


def _consumer_layer(analysis: Analysis, member, original: TorchModel) -> RefitLayer | None:
    """The consumer reading `member` as the refit would solve it (all channels kept), or None when
    the refit could not solve it."""
    node = analysis.index.nodes[member.node]
    view = original.views[member.initializer]
    if node.op_type == "MatMul":
        everything = np.ones(len(member.layout), dtype=bool)
        layer = matmul_layer(analysis, node, member, everything, None, original, original)
        return layer if layer.skip is None else None
    kind, skip = layer_kind(node, view.owner, view)
    # A depthwise consumer loses its own output with an input channel: not a column drop of its solve.
    if skip is not None or kind not in ("conv", "linear") or view.torch_axis(member.axis) != 1 and kind != "linear":
        return None
    module = view.owner
    width_in, width_out = (module.in_features, module.out_features) if kind == "linear" else (module.in_channels, module.out_channels)
    return RefitLayer(node.name, node.op_type, member.initializer, module, module, torch.arange(width_in),
                      torch.arange(width_out), kind)


@torch.no_grad()
def _normal_equations(layer: RefitLayer, model: nn.Module, data, seed: int) -> NormalEquations:
    k, o = unknowns(layer), len(layer.kept_out)
    eq = NormalEquations(1, k, o)
    per_image = None if layer.kind in ("linear", "matmul") else max(1, math.ceil(ROWS_PER_UNKNOWN * k / max(len(data), 1)))
    generator = torch.Generator().manual_seed(seed)
    for x, _ in data.batches(BATCH):
        inp, out = capture_pair(model, layer.module, x)
        X, Y = rows_of(layer, inp, out, per_image, generator)
        eq.add(X.cpu(), Y.cpu())
    return eq


class _Consumer:
    """One consumer's elimination state: P and W over its live columns."""

    def __init__(self, eq: NormalEquations, columns: dict[int, torch.Tensor]):
        A = eq.A[0]
        k = A.shape[0]
        lam = RIDGE * float(torch.diagonal(A).mean().clamp_min(1e-12))
        self.P = torch.linalg.inv(A + lam * torch.eye(k, dtype=A.dtype))
        self.W = self.P @ eq.B[0]
        self.scale = float(eq.c.sum().clamp_min(1e-30))
        self.live = torch.arange(k)  # original column of each row of P / W
        self.columns = columns  # group channel -> its original columns

    def _rows(self, channel: int) -> torch.Tensor:
        cols = self.columns[channel]
        return torch.nonzero(torch.isin(self.live, cols)).flatten()

    def cost(self, channel: int) -> float:
        s = self._rows(channel)
        if len(s) == 0:
            return 0.0
        Pss, Ws = self.P[s][:, s], self.W[s]
        return float((torch.linalg.solve(Pss, Ws) * Ws).sum()) / self.scale

    def costs(self, channels: list[int]) -> torch.Tensor:
        """dE of each channel, batched where every channel has the same number of columns."""
        rows = [self._rows(c) for c in channels]
        sizes = {len(r) for r in rows}
        if len(sizes) == 1 and 0 not in sizes:
            idx = torch.stack(rows)  # [n, t]
            Pss = self.P[idx[:, :, None], idx[:, None, :]]
            Ws = self.W[idx]
            return (torch.linalg.solve(Pss, Ws) * Ws).sum((1, 2)) / self.scale
        return torch.tensor([self.cost(c) for c in channels], dtype=torch.float64)

    def drop(self, channel: int) -> None:
        s = self._rows(channel)
        if len(s) == 0:
            return
        keep = torch.ones(len(self.live), dtype=torch.bool)
        keep[s] = False
        r = keep.nonzero().flatten()
        Prs = self.P[r][:, s]
        solve = torch.linalg.solve(self.P[s][:, s], torch.cat([Prs.T, self.W[s]], 1))
        self.P = self.P[r][:, r] - Prs @ solve[:, :len(r)]
        self.W = self.W[r] - Prs @ solve[:, len(r):]
        self.live = self.live[r]


def _columns(layer: RefitLayer, channel_at: torch.Tensor) -> dict[int, torch.Tensor]:
    """Group channel -> the consumer's unknown columns it feeds (input position p: p*taps ... )."""
    width = taps(layer)
    out: dict[int, list] = {}
    for p, j in enumerate(channel_at.tolist()):
        if j >= 0:
            out.setdefault(j, []).extend(range(p * width, (p + 1) * width))
    return {j: torch.tensor(c) for j, c in out.items()}


def reconstruction_rankings(analysis: Analysis, original: TorchModel, data, group_names, seed: int = 0,
                            log=None) -> dict[str, torch.Tensor]:
    """Per group: a float64 score per channel, higher = removed later (the greedy elimination
    order); groups with no measurable consumer are left out (L1 decides there)."""
    log = log or (lambda *a: None)
    module = original.module
    was = module.training
    module.eval()
    find = analysis.elements.find
    cache: dict[str, NormalEquations | None] = {}
    rankings = {}
    try:
        for name in group_names:
            group = analysis.group(name)
            root_to_channel = analysis.channel_of_root(group)
            consumers = []
            for mi in group.members:
                m = analysis.members[mi]
                if m.role != IN_WEIGHT or m.initializer not in original.views:
                    continue
                layer = _consumer_layer(analysis, m, original)
                if layer is None or unknowns(layer) > MAX_UNKNOWNS:
                    continue
                if m.node not in cache:
                    cache[m.node] = _normal_equations(layer, module, data, seed)
                channel_at = torch.tensor([root_to_channel.get(find(e), -1) if e >= 0 else -1 for e in m.layout.tolist()])
                columns = _columns(layer, channel_at)
                if columns:
                    consumers.append(_Consumer(cache[m.node], columns))
            if not consumers:
                continue
            frozen = [why is not None for why in group.frozen]
            alive = [j for j in range(group.width) if not frozen[j]]
            score = torch.full((group.width,), float("inf"), dtype=torch.float64)
            for step in range(max(len(alive) - 1, 0)):
                total = sum(c.costs(alive) for c in consumers)
                j = alive[int(torch.argmin(total))]
                score[j] = step + 1  # > 0: a kept channel's score is never zero
                for c in consumers:
                    c.drop(j)
                alive.remove(j)
            for j in alive:
                score[j] = group.width + 1  # the last one standing
            rankings[name] = score
            log(f"ranked {name}: {len(consumers)} consumer(s)")
    finally:
        module.train(was)
    return rankings
