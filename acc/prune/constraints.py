"""Structured sparsity constraints on the torch side, and the Euclidean projection onto them.

Two shapes, both on ONNX initializers seen through the bridge:
- GroupConstraint: keep `keep` channels of a channel group; a channel's norm is summed over every
  weight that writes or reads it (all members of the group), so coupled layers decide together.
  Projection zeroes the other channels' positions in every weight member. Frozen channels stay.
- ColumnConstraint: remove `rate` of the live columns of one conv/Gemm weight viewed as
  W[out, in*kh*kw] (one column = one (in_channel, kh, kw) position across all filters). A column
  is live unless a group constraint already removes its input channel, so filter and column
  pruning of one weight compose: its kept fraction is (1 - filter rate) x (1 - column rate).
  Columns that are all zero when the constraint is made (pruned by an earlier round) stay zero and
  are not live: each round prunes a share of what survived the last, never regrows it.

`project` returns Z (same shapes as the given tensors); `support` the boolean keep masks. The
hard-prune masks of a group constraint also cover biases and BN scale/shift (zeroed as in
acc.passes.mask), so a removed channel is exactly dead in the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from acc.passes.analysis import Analysis
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.mask import ZEROED_ROLES
from acc.prune.bridge import TorchModel


@dataclass
class MemberIndex:
    """One ONNX member seen in torch: which torch axis, and the group channel at each position (-1: other)."""

    name: str
    torch_axis: int
    channel_at: torch.Tensor  # long [positions]
    role: str


class GroupConstraint:
    def __init__(self, analysis: Analysis, bridge: TorchModel, group_name: str, keep: int, criterion: str = "l2"):
        self.criterion = criterion
        group = analysis.group(group_name)
        self.name = group_name
        self.width = group.width
        self.keep = max(1, min(int(keep), group.width))
        self.frozen = torch.tensor([why is not None for why in group.frozen])
        self.fixed_scores: torch.Tensor | None = None  # a ranking decided elsewhere (higher kept first)
        find = analysis.elements.find
        root_to_channel = analysis.channel_of_root(group)
        self.members: list[MemberIndex] = []
        for mi in group.members:
            m = analysis.members[mi]
            if m.initializer not in bridge.views:
                continue
            view = bridge.views[m.initializer]
            channel_at = [root_to_channel.get(find(e), -1) if e >= 0 else -1 for e in m.layout.tolist()]
            self.members.append(MemberIndex(m.initializer, view.torch_axis(m.axis), torch.tensor(channel_at), m.role))

    @property
    def weight_names(self) -> set[str]:
        return {m.name for m in self.members if m.role in WEIGHT_ROLES}

    def scores(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.fixed_scores is not None:
            return self.fixed_scores.clone()
        total = torch.zeros(self.width, dtype=torch.float64)
        for m in self.members:
            if m.role not in WEIGHT_ROLES or m.name not in tensors:
                continue
            t = tensors[m.name].detach().double()
            per_pos = (t.abs() if self.criterion == "l1" else t.pow(2))
            per_pos = per_pos.transpose(0, m.torch_axis).reshape(t.shape[m.torch_axis], -1).sum(1).cpu()
            valid = m.channel_at >= 0
            total.index_add_(0, m.channel_at[valid], per_pos[valid])
        return total

    def kept_channels(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool [width]: frozen channels always, then the largest norms up to `keep`."""
        scores = self.scores(tensors)
        scores[self.frozen] = float("inf")
        order = torch.argsort(scores, descending=True, stable=True)
        kept = torch.zeros(self.width, dtype=torch.bool)
        kept[order[: max(self.keep, int(self.frozen.sum()))]] = True
        return kept

    def position_masks(self, kept: torch.Tensor, roles) -> dict[str, tuple[int, torch.Tensor]]:
        out = {}
        for m in self.members:
            if m.role not in roles:
                continue
            keep_pos = torch.ones(len(m.channel_at), dtype=torch.bool)
            valid = m.channel_at >= 0
            keep_pos[valid] = kept[m.channel_at[valid]]
            out.setdefault(m.name, []).append((m.torch_axis, keep_pos))
        return out


class ColumnConstraint:
    def __init__(self, name: str, shape: torch.Size, torch_axis_in: int, rate: float, criterion: str = "l2",
                 initial: torch.Tensor | None = None):
        """`initial`: the weight as the run starts; its all-zero columns are retired for good."""
        self.criterion = criterion
        self.name = name
        self.rate = float(rate)
        self.in_axis = torch_axis_in  # torch axis of the input channels (1 for conv, 1 or 0 for Linear)
        self.shape = tuple(shape)
        out_axis = 0 if torch_axis_in != 0 else 1
        self.out_axis = out_axis
        self.columns = int(np.prod(self.shape)) // self.shape[out_axis]
        self.retired = torch.zeros(self.columns, dtype=torch.bool)
        if initial is not None:
            self.retired = ~self._as_matrix(initial.detach()).ne(0).any(0).cpu()

    def _as_matrix(self, t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, self.out_axis).reshape(t.shape[self.out_axis], -1)

    def kept_columns(self, t: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """Bool [columns]: the live columns (all, or those `live` marks) minus `rate` of them, smallest norms first."""
        m = self._as_matrix(t.detach())
        norms = (m.abs() if self.criterion == "l1" else m.pow(2)).sum(0).cpu()
        live = torch.ones(self.columns, dtype=torch.bool) if live is None else live.cpu()
        live = live & ~self.retired
        n_live = int(live.sum())
        keep = max(1, n_live - round(self.rate * n_live)) if n_live else 0
        norms = torch.where(live, norms.double(), torch.tensor(-1.0, dtype=torch.float64))
        kept = torch.zeros(self.columns, dtype=torch.bool)
        kept[torch.argsort(norms, descending=True, stable=True)[:keep]] = True
        return kept

    def live_columns(self, group_mask: torch.Tensor) -> torch.Tensor:
        """Columns that a group constraint's keep-mask of this weight leaves in some kept filter."""
        return self._as_matrix(group_mask).any(0).cpu()

    def mask(self, kept_columns: torch.Tensor) -> torch.Tensor:
        """Bool mask of the weight's torch shape."""
        moved_shape = (self.shape[self.out_axis],) + tuple(s for i, s in enumerate(self.shape) if i != self.out_axis)
        m = kept_columns.view(1, *moved_shape[1:]).expand(moved_shape)
        perm = list(range(1, len(self.shape)))
        perm.insert(self.out_axis, 0)
        return m.permute(*perm) if self.out_axis != 0 else m.contiguous()


def position_mask(shape, entries, device=None) -> torch.Tensor:
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    for axis, keep_pos in entries:
        view = [1] * len(shape)
        view[axis] = len(keep_pos)
        mask &= keep_pos.to(mask.device).view(view)
    return mask


class ConstraintSet:
    """All constraints of one pruning run; projections and masks are keyed by ONNX initializer name."""

    def __init__(self, groups: list[GroupConstraint], columns: list[ColumnConstraint]):
        self.groups = groups
        self.columns = columns

    @property
    def constrained_names(self) -> set[str]:
        names = set()
        for g in self.groups:
            names |= g.weight_names
        return names | {c.name for c in self.columns}

    def weight_masks(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep-masks of the constrained weights for the projection of `tensors`."""
        masks: dict[str, torch.Tensor] = {}
        for g in self.groups:
            kept = g.kept_channels(tensors)
            for name, entries in g.position_masks(kept, WEIGHT_ROLES).items():
                if name in tensors:
                    m = position_mask(tensors[name].shape, entries, tensors[name].device)
                    masks[name] = masks[name] & m if name in masks else m
        for c in self.columns:
            if c.name in tensors:
                t, group_mask = tensors[c.name], masks.get(c.name)
                if group_mask is None:
                    masks[c.name] = c.mask(c.kept_columns(t)).to(t.device)
                else:
                    kept = c.kept_columns(t * group_mask, c.live_columns(group_mask))
                    masks[c.name] = group_mask & c.mask(kept).to(t.device)
        return masks

    def project(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        masks = self.weight_masks(tensors)
        return {name: tensors[name] * masks[name] for name in masks}

    def hard_masks(self, tensors: dict[str, torch.Tensor], all_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masks for hard pruning: the projection's support, extended to biases and BN scale/shift."""
        masks = self.weight_masks(tensors)
        for g in self.groups:
            kept = g.kept_channels(tensors)
            for name, entries in g.position_masks(kept, ZEROED_ROLES).items():
                if name in all_tensors and name not in g.weight_names:
                    m = position_mask(all_tensors[name].shape, entries, all_tensors[name].device)
                    masks[name] = masks[name] & m if name in masks else m
        return masks
