"""A small Vision Transformer for CIFAR-10 (32x32): patch 4 (64 patches), depth 6, width 192, 3 heads.

Pre-norm blocks (LayerNorm -> attention -> residual, LayerNorm -> GELU MLP ratio 4 -> residual), a
class token concatenated before the patches, a learned positional embedding, and a linear head on
the class token. Attention is written out by hand (separate q, k, v Linears, a reshape into
[batch, tokens, heads, head_dim] and a transpose) so that the exported graph shows the head split
and merge that acc's analysis prunes; `sdpa=True` computes the scores with
`F.scaled_dot_product_attention` instead of the explicit matmul-softmax-matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sdpa: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads, self.head_dim, self.sdpa = heads, dim // heads, sdpa
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            y = scores.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, sdpa: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, sdpa)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 6,
                 heads: int = 3, mlp_ratio: int = 4, sdpa: bool = False):
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, sdpa) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def vit(num_classes: int = 10, **kwargs) -> ViT:
    """The CIFAR-10 ViT: patch 4, depth 6, width 192, 3 heads, MLP 768 (about 2.7 M parameters)."""
    return ViT(num_classes=num_classes, **kwargs)


def export_vit(path, *, dynamo: bool = False, opset: int = 17, **kwargs):
    """Write `vit(**kwargs)` as ONNX (input "input" [1, 3, 32, 32], output "logits") with the legacy
    or the dynamo exporter, as models/export.py writes the CNNs; returns the path."""
    from models.export import export_onnx

    return export_onnx(vit(**kwargs), path, dynamo=dynamo, opset=opset)
