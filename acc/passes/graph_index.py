"""A read-only index over an ONNX graph: producers, consumers, constants, static shapes, and the
networkx view (op nodes and tensors as vertices) that gives the traversal order."""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from acc.passes.normalize import static_shapes


class GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.nodes = {n.name: n for n in self.graph.node}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.shapes = static_shapes(model)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.input_names = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.output_names = [o.name for o in self.graph.output]
        self._arrays: dict[str, np.ndarray] = {}

    @cached_property
    def nx_graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.graph.node:
            g.add_node(("op", node.name), kind="op", op_type=node.op_type)
            for name in node.input:
                if name:
                    g.add_edge(("tensor", name), ("op", node.name))
            for name in node.output:
                if name:
                    g.add_edge(("op", node.name), ("tensor", name))
        return g

    def topological_nodes(self) -> list[onnx.NodeProto]:
        order = nx.lexicographical_topological_sort(self.nx_graph, key=str)
        return [self.nodes[v[1]] for v in order if v[0] == "op"]

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
