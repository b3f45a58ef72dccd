"""Packed attention split into separate q, k, v and output Linear layers, computing the same function.

open_clip blocks use nn.MultiheadAttention (one packed `in_proj_weight`), timm blocks use `Attention` (one
packed `qkv` Linear). peft can only target whole Linear modules, so LoRA on q and v alone needs them apart.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import nn

BLOCK_ATTENTION = re.compile(r"(?:^|\.)(?:resblocks|blocks)\.(\d+)\.attn$")


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool) -> nn.Linear:
    """A Linear layer holding a copy of `weight` (out, in) and `bias`."""
    out_features, in_features = weight.shape
    layer = nn.Linear(
        in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(requires_grad)
    return layer


class SplitMultiheadAttention(nn.Module):
    """Drop-in for open_clip's nn.MultiheadAttention (self or cross attention) with separate q, k, v, o."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise TypeError(
                "only packed nn.MultiheadAttention without bias_k/bias_v/add_zero_attn can be split"
            )
        width = mha.embed_dim
        trainable = mha.in_proj_weight.requires_grad
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        self.q, self.k, self.v = (
            _linear_from(w, b, trainable) for w, b in zip(mha.in_proj_weight.chunk(3), biases, strict=True)
        )
        self.o = _linear_from(mha.out_proj.weight, mha.out_proj.bias, mha.out_proj.weight.requires_grad)
        self.num_heads = mha.num_heads
        self.head_dim = width // mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """One additive float mask (B or 1, H or 1, L, S) from nn.MultiheadAttention's mask conventions."""
        mask = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, float("-inf"))
            mask = attn_mask.to(dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, *mask.shape[-2:])
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                key_padding_mask = torch.zeros_like(key_padding_mask, dtype=dtype).masked_fill(
                    key_padding_mask, float("-inf")
                )
            padding = key_padding_mask.to(dtype).view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """Attention output (same layout as `query`) and None in place of attention weights."""
        if need_weights:
            raise ValueError("split attention returns no attention weights: call it with need_weights=False")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, width = query.shape
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        mask = self._mask(attn_mask, key_padding_mask, batch, q.dtype)
        causal = is_causal and mask is None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        out = self.o(out.transpose(1, 2).reshape(batch, length, width))
        if unbatched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None


class SplitTimmAttention(nn.Module):
    """Drop-in for timm's Attention (packed qkv, q/k norm, scale norm, gate) with separate q, k, v, o."""

    def __init__(self, attn: TimmAttention) -> None:
        super().__init__()
        trainable = attn.qkv.weight.requires_grad
        biases = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None, None, None)
        self.q, self.k, self.v = (
            _linear_from(w, b, trainable) for w, b in zip(attn.qkv.weight.chunk(3), biases, strict=True)
        )
        self.o = _linear_from(attn.proj.weight, attn.proj.bias, attn.proj.weight.requires_grad)
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = getattr(attn, "norm", nn.Identity())
        self.gate = getattr(attn, "gate", None)
        self.proj_drop = attn.proj_drop

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Self-attention over tokens x (B, N, C), masks as in timm (SDPA semantics)."""
        batch, length, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = (
            proj(x).reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )
        out = self.norm(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.o(out))


SPLIT_TYPES = (SplitMultiheadAttention, SplitTimmAttention)


def split_attention(model: nn.Module) -> dict[int, str]:
    """Replace every transformer block's packed attention by its split equivalent, in place.

    Returns {block index: module name of the split attention}. Already split blocks are kept as they are.
    """
    blocks: dict[int, str] = {}
    for name, module in list(model.named_modules()):
        found = BLOCK_ATTENTION.search(name)
        if found is None:
            continue
        if isinstance(module, nn.MultiheadAttention):
            replacement: nn.Module = SplitMultiheadAttention(module)
        elif isinstance(module, TimmAttention):
            replacement = SplitTimmAttention(module)
        elif isinstance(module, SPLIT_TYPES):
            replacement = module
        else:
            kind = type(module)
            raise TypeError(
                f"{name}: no attention split for {kind.__module__}.{kind.__qualname__}; expected "
                "nn.MultiheadAttention (open_clip) or timm.layers.Attention (timm ViTs)"
            )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement.train(module.training)
        setattr(parent, child, replacement)
        blocks[int(found.group(1))] = name
    return dict(sorted(blocks.items()))
