"""A GPT-style language model as blocks: embedding | transformer blocks | final norm and head.

After nanoGPT (Karpathy): pre-norm blocks of causal self-attention and an MLP,
GELU, dropout after the embedding, in attention and after each residual
branch; weights drawn from N(0, 0.02), the residual projections scaled by
1/sqrt(2 n_layer). The token embedding and the output head are untied: with
the model split into stages they sit on different ranks (stage 0 and the last
stage), and a tied weight would need its gradient summed across them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Embedding(nn.Module):
    """Token ids (N, T) -> features (N, T, n_embd): token plus position embedding."""

    def __init__(self, vocab: int, block_size: int, n_embd: int, dropout: float):
        super().__init__()
        self.token = nn.Embedding(vocab, n_embd)
        self.position = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.token(idx) + self.position(positions))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.dropout = n_head, dropout
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, C = x.shape
        q, k, v = (t.view(N, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        # Its dropout draws from the global RNG like nn.Dropout: a replay that restores the RNG state repeats it.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(N, T, C)))


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Head(nn.Module):
    """Features (N, T, n_embd) -> next-token logits (N, T, vocab)."""

    def __init__(self, n_embd: int, vocab: int):
        super().__init__()
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


def gpt_blocks(in_shape, classes: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block_size: int = 128,
               dropout: float = 0.0) -> list[nn.Module]:
    """[embedding, n_layer transformer blocks, head] for windows of in_shape = (T,) tokens of a `classes`-symbol
    vocabulary (256 for bytes); T <= block_size (models.check_options refuses longer windows)."""
    blocks = [Embedding(classes, block_size, n_embd, dropout)]
    blocks += [Block(n_embd, n_head, dropout) for _ in range(n_layer)]
    blocks.append(Head(n_embd, classes))
    for block in blocks:
        for name, p in block.named_parameters():
            if name.endswith("weight") and p.dim() == 2:  # linear and embedding weights
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):  # residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
    return blocks
