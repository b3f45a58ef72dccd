"""Packed attention split into q, k, v, o Linear layers computes the same function (max abs diff <= 1e-5)."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import Transformer
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block
from torch import nn

from cytotune.models import build_backbone
from cytotune.models.attention import SplitMultiheadAttention, SplitTimmAttention, split_attention

TOL = 1e-5
FAMILIES = ["tiny_clip", "tiny_vit", "tiny_biomedclip"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", FAMILIES)
def test_split_backbone_equals_original(name):
    torch.manual_seed(0)
    original = build_backbone(name)
    split = copy.deepcopy(original)
    blocks = split_attention(split)
    assert list(blocks) == [0, 1]
    assert all(
        isinstance(split.get_submodule(path), SplitMultiheadAttention | SplitTimmAttention)
        for path in blocks.values()
    )
    assert not any(isinstance(m, nn.MultiheadAttention | TimmAttention) for m in split.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(original(x), split(x)) <= TOL
    assert split_attention(split) == blocks  # idempotent


def test_split_keeps_parameter_count_and_frozen_state():
    original = build_backbone("tiny_clip").requires_grad_(False)
    split = copy.deepcopy(original)
    split_attention(split)
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in original.parameters())
    assert not any(p.requires_grad for p in split.parameters())


@pytest.mark.parametrize("batch_first", [True, False])
def test_open_clip_transformer_with_causal_mask_and_either_layout(batch_first):
    # ViT-B/16 width and heads, open_clip's own blocks, causal float mask as the text tower uses it.
    torch.manual_seed(1)
    original = Transformer(width=768, layers=1, heads=12, batch_first=batch_first).eval()
    split = copy.deepcopy(original)
    split_attention(split)
    x = torch.randn(2, 9, 768)
    causal = torch.full((9, 9), float("-inf")).triu_(1)
    with torch.no_grad():
        assert max_diff(original(x), split(x)) <= TOL
        assert max_diff(original(x, attn_mask=causal), split(x, attn_mask=causal)) <= TOL


def test_multihead_attention_masks_and_cross_attention():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    split = SplitMultiheadAttention(mha).eval()
    q, kv = torch.randn(3, 5, 64), torch.randn(3, 7, 64)
    bool_mask = torch.zeros(5, 7, dtype=torch.bool)
    bool_mask[:, -2:] = True
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 0] = True
    per_head = torch.randn(3 * 4, 5, 7)
    cases = [
        {},
        {"attn_mask": bool_mask},
        {"key_padding_mask": padding},
        {"attn_mask": bool_mask, "key_padding_mask": padding},
        {"attn_mask": per_head},
    ]
    with torch.no_grad():
        for kwargs in cases:
            expected = mha(q, kv, kv, need_weights=False, **kwargs)[0]
            assert max_diff(expected, split(q, kv, kv, need_weights=False, **kwargs)[0]) <= TOL, kwargs
        unbatched = mha(q[0], kv[0], kv[0], need_weights=False)[0]
        assert max_diff(unbatched, split(q[0], kv[0], kv[0], need_weights=False)[0]) <= TOL
    with pytest.raises(ValueError, match="need_weights=False"):
        split(q, kv, kv)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_timm_block_at_vit_b16_width(qk_norm):
    torch.manual_seed(3)
    original = nn.Sequential()
    original.add_module("blocks", nn.Sequential(Block(768, 12, qkv_bias=True, qk_norm=qk_norm)))
    original.eval()
    if qk_norm:
        with torch.no_grad():
            original.blocks[0].attn.q_norm.weight.uniform_(0.5, 1.5)
            original.blocks[0].attn.k_norm.bias.uniform_(-0.5, 0.5)
    split = copy.deepcopy(original)
    assert list(split_attention(split)) == [0]
    x = torch.randn(2, 11, 768)
    with torch.no_grad():
        assert max_diff(original(x), split(x)) <= TOL


def test_timm_attention_unfused_path_and_boolean_mask():
    torch.manual_seed(4)
    attn = TimmAttention(64, num_heads=4, qkv_bias=True).eval()
    attn.fused_attn = False
    split = SplitTimmAttention(attn).eval()
    x = torch.randn(2, 6, 64)
    mask = torch.ones(6, 6, dtype=torch.bool).tril_()
    with torch.no_grad():
        assert max_diff(attn(x), split(x)) <= TOL
        assert max_diff(attn(x, attn_mask=mask), split(x, attn_mask=mask)) <= TOL


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("clip_vit_b16", 12), ("clip_vit_l14", 24), ("vit_b16", 12), ("biomedclip", 12), ("uni", 24)],
)
def test_real_architectures_split_every_block(name, blocks):
    backbone = build_backbone(name, device="meta")
    found = split_attention(backbone)
    assert list(found) == list(range(blocks))
    expected = (
        SplitMultiheadAttention
        if backbone.spec.library == "open_clip" and name != "biomedclip"
        else SplitTimmAttention
    )
    assert all(type(backbone.get_submodule(path)) is expected for path in found.values())
