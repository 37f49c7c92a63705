"""The masked model: same graph, same shapes, the removed channels' weights zeroed through the group.

It is what the pruned model computes before the rewrite makes it smaller, and what verify compares
the rewritten graph against. Only weights, biases and BN scale/shift are zeroed: other per-channel
constants (a divisor, a running variance) keep their values so no channel becomes inf or NaN;
the zeroed reading columns make the removed channels' values irrelevant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from acc.passes.analysis import Analysis
from acc.passes.channels import BIAS, BN_SCALE, BN_SHIFT, DW_WEIGHT, IN_WEIGHT, OUT_WEIGHT
from acc.passes.plan import Plan, Removal

ZEROED_ROLES = (OUT_WEIGHT, IN_WEIGHT, DW_WEIGHT, BIAS, BN_SCALE, BN_SHIFT)


def zero_removed(analysis: Analysis, plan: Plan, arrays: dict[str, np.ndarray]) -> None:
    """Zero, in place, the removed positions of every weight-like member in `arrays`."""
    removal = Removal(analysis, plan)
    for m in analysis.members:
        if m.role not in ZEROED_ROLES or m.initializer not in arrays:
            continue
        mask = removal.keep_mask(m.layout)
        if mask.all():
            continue
        index = [slice(None)] * arrays[m.initializer].ndim
        index[m.axis] = ~mask
        arrays[m.initializer][tuple(index)] = 0


def masked_model(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    names = {m.initializer for m in analysis.members if m.role in ZEROED_ROLES}
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if t.name in names}
    zero_removed(analysis, plan, arrays)
    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return model
