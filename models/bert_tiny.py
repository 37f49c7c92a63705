"""A BERT-tiny-shaped text encoder: token + position embeddings, 2 post-norm layers of hidden 128,
2 heads, GELU MLP 512, LayerNorm. It reads token ids [batch, length] (int64) and returns the
sequence features [batch, length, 128], or with `num_classes` the logits of a classifier on the
first token (BERT's pooler: Linear + tanh, then a Linear).

Attention is the same hand-written form as models/vit.py (q, k, v Linears, head split by reshape
and transpose) and can use `F.scaled_dot_product_attention` (`sdpa=True`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.vit import Attention


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, sdpa: bool):
        super().__init__()
        self.attn, self.norm1 = Attention(dim, heads, sdpa), nn.LayerNorm(dim, eps=1e-12)
        self.fc1, self.fc2, self.norm2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class BertTiny(nn.Module):
    def __init__(self, vocab: int = 1000, length: int = 32, dim: int = 128, depth: int = 2, heads: int = 2,
                 hidden: int = 512, num_classes: int | None = None, sdpa: bool = False):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, hidden, sdpa) for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim) if num_classes else None
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.tokens(ids) + self.positions[:, : ids.shape[1]])
        for layer in self.layers:
            x = layer(x)
        if self.classifier is None:
            return x
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert_tiny(num_classes: int | None = None, **kwargs) -> BertTiny:
    return BertTiny(num_classes=num_classes, **kwargs)


def export_bert_tiny(path, *, dynamo: bool = False, opset: int = 17, batch: int = 1, **kwargs):
    """Write `bert_tiny(**kwargs)` as ONNX: input "input" [batch, length] int64 token ids, output
    "logits" (classifier) or "features" (the sequence). Legacy exporter without constant folding,
    or dynamo at its own default opset (as models/export.py); returns the path."""
    import warnings
    from pathlib import Path

    model = bert_tiny(**kwargs).eval()
    ids = torch.randint(0, model.tokens.num_embeddings, (batch, model.positions.shape[1]))
    output = "logits" if model.classifier is not None else "features"
    options = ({"dynamo": True, "verbose": False, "opset_version": opset if opset >= 18 else None} if dynamo
               else {"dynamo": False, "opset_version": opset, "do_constant_folding": False})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), str(path), input_names=["input"], output_names=[output], **options)
    return Path(path)
