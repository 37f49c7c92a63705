"""The pruned model's input to every refitted layer, in one forward pass over the calibration batches.

The refit needs, for each layer in turn, the pruned model's input to it with every layer before it
already refitted. Capturing that by a forward pass stopped at the layer costs one partial pass per
layer and batch: about L/2 full passes for L layers, which made the refit of MobileNetV2 (53
layers) cost more than three training epochs. Here the torch.fx graph is run node by node for all
the batches together, and the run pauses at each refitted layer: the caller fits the layer from
the inputs it is handed, writes the weights, and the run goes on through the refitted layer. Each
node runs once per batch on the same tensors as before, so the inputs are the ones the stopped
passes give, bit for bit, at the cost of one pass.

Layers are handed over in the graph's order. That is a topological order, and a layer's input
depends only on the layers upstream of it, so the refit gives the weights it gives in any other
topological order. The live activations of all the batches are held together; when they pass
`budget` bytes the sweep stops (`exhausted`) and the caller captures the rest layer by layer.
"""

from __future__ import annotations

import torch
from torch import fx, nn

SWEEP_BYTES = 2 * 1024**3  # live activations over all batches (CIFAR MobileNetV2, 512 images: about 0.4 GiB)


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class LayerSweep:
    """`for module, inputs in sweep:` yields each refitted module (in graph order) with the input
    it gets on every batch (a list, batch order); the run resumes through that module, with the
    weights the caller has written, on the next step. `exhausted` is True when the live activations
    passed the budget and the sweep stopped early."""

    def __init__(self, model: fx.GraphModule, modules: list[nn.Module], batches: list[torch.Tensor],
                 budget: int = SWEEP_BYTES):
        self.model, self.batches, self.budget = model, batches, budget
        names = {id(m): name for name, m in model.named_modules()}
        self.wanted = {names[id(m)] for m in modules}
        self.exhausted = False
        self.reached: set[str] = set()  # the wanted modules handed over so far
        self.peak = 0  # the most live activation bytes so far

    @staticmethod
    def supports(model: nn.Module, modules: list[nn.Module]) -> bool:
        """Whether `model` is an fx graph with one input in which every module is called by a node of its own."""
        if not isinstance(model, fx.GraphModule):
            return False
        graph = model.graph
        if sum(1 for n in graph.nodes if n.op == "placeholder") != 1:
            return False
        names = {id(m): name for name, m in model.named_modules()}
        called = {n.target for n in graph.nodes if n.op == "call_module"}
        unique = len({id(m) for m in modules}) == len(modules)
        return unique and all(id(m) in names and names[id(m)] in called for m in modules)

    @torch.no_grad()
    def __iter__(self):
        graph = self.model.graph
        nodes = list(graph.nodes)
        last_use: dict[fx.Node, fx.Node] = {}
        for node in nodes:
            for used in node.all_input_nodes:
                last_use[used] = node
        env: dict[fx.Node, list] = {}
        sizes: dict[fx.Node, int] = {}
        live = 0
        for node in nodes:
            if node.op == "output":
                return
            if node.op == "placeholder":
                values = list(self.batches)
            else:
                if node.op == "call_module" and node.target in self.wanted and node.target not in self.reached:
                    self.reached.add(node.target)
                    yield self.model.get_submodule(node.target), [fx.node.map_arg(node.args[0], lambda n: env[n][b])
                                                                  for b in range(len(self.batches))]
                values = [self._run(node, env, b) for b in range(len(self.batches))]
            env[node] = values
            sizes[node] = 0 if node.op == "get_attr" else sum(_nbytes(v) for v in values)  # parameters are not activations
            live += sizes[node]
            self.peak = max(self.peak, live)
            if live > self.budget:  # the node's inputs and outputs are both held at this point
                self.exhausted = True
                return
            for used in node.all_input_nodes:
                if last_use.get(used) is node:
                    del env[used]
                    live -= sizes.pop(used)

    @property
    def handed(self) -> int:
        """Layers handed over so far."""
        return len(self.reached)

    def _run(self, node: fx.Node, env: dict, b: int):
        args = fx.node.map_arg(node.args, lambda n: env[n][b])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n][b])
        if node.op == "call_module":
            return self.model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            target = self.model
            for part in node.target.split("."):
                target = getattr(target, part)
            return target
        raise RuntimeError(f"unexpected fx node {node.op}")
