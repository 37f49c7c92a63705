"""A pruning plan (which channels of which group stay) and what it means for each member position."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from acc.errors import InputError
from acc.passes.analysis import Analysis


@dataclass
class Plan:
    """keep[group name] = sorted indices of the group's channels that stay; absent groups stay whole."""

    keep: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {name: [int(i) for i in idx] for name, idx in self.keep.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls({str(k): sorted(int(i) for i in v) for k, v in data.items()})

    def is_empty(self, analysis: Analysis) -> bool:
        return all(len(v) == analysis.group(k).width for k, v in self.keep.items())


class Removal:
    """The plan resolved to element roots, with per-position keep masks for any layout."""

    def __init__(self, analysis: Analysis, plan: Plan):
        self.analysis = analysis
        self.removed: set[int] = set()
        el = analysis.elements
        for name, kept in plan.keep.items():
            try:
                group = analysis.group(name)
            except KeyError:
                raise InputError(f"the plan names a group the model does not have: {name}") from None
            kept_set = set(kept)
            if any(j < 0 or j >= group.width for j in kept_set):
                raise InputError(f"group {name}: kept index out of range 0..{group.width - 1}")
            if not kept_set:
                raise InputError(f"group {name}: at least one channel must stay")
            for j, channel in enumerate(group.channels):
                if j in kept_set:
                    continue
                if group.frozen[j] is not None:
                    raise InputError(f"group {name}: channel {j} cannot be removed ({group.frozen[j]})")
                self.removed.add(el.find(int(channel[0])))

    def keep_mask(self, layout: np.ndarray) -> np.ndarray:
        find = self.analysis.elements.find
        return np.array([e < 0 or find(e) not in self.removed for e in layout.tolist()], dtype=bool)

    def member_masks(self) -> dict[str, dict[int, np.ndarray]]:
        """initializer -> axis -> keep mask; members on one axis agree (the analysis unioned them)."""
        masks: dict[str, dict[int, np.ndarray]] = {}
        for m in self.analysis.members:
            mask = self.keep_mask(m.layout)
            per_axis = masks.setdefault(m.initializer, {})
            if m.axis in per_axis:
                per_axis[m.axis] &= mask
            else:
                per_axis[m.axis] = mask
        return masks
