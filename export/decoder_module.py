"""The decoder as it is exported: Qwen2's math written out for a lean one-token decode graph.

Exporting ``Qwen2ForCausalLM`` through transformers' cache and mask machinery (``CachedDecoder``)
gives a correct graph, but each decode step then spends ~30% of its time outside the weight
MatMuls on CPU (measured on ``small``, ORT profiler): ``Concat`` of past and new K/V copies the whole
cache into ``present`` every step, ``Expand`` repeats the K/V heads for grouped-query attention (another
copy of the cache, x3), and the RMSNorm pattern (``Pow``/``Sqrt``/``Reciprocal``) escapes ORT's fusions.
This module computes the same function with the same weights, in standard ONNX ops only (TensorRT
imports it as it imports the other graphs), and:

- emits ``present`` = the K/V of the *new* positions only (B, KV, S, hd): the runtime owns the cache
  and copies S slots into it; attention reads ``past`` and the new K/V as two blocks (scores of the
  two are concatenated, never the cache itself);
- groups queries by K/V head (B, KV, G*S, hd) instead of repeating K/V (no ``Expand``);
- fuses Q/K/V into one MatMul and gate/up into another (fewer, larger GEMVs), and applies RoPE to the
  query and key heads together, the sign of ``rotate_half`` folded into the sine table (computed once);
- writes RMSNorm as ``x / sqrt(mean(x^2) + eps) * w``, the pattern ORT fuses into
  ``SimplifiedLayerNormalization`` (and with the residual ``Add`` into ``SkipSimplifiedLayerNormalization``);
- normalizes and projects only the last position (``logits_to_keep=1``).

Export validates it against ``CachedDecoder`` (transformers' own forward) on every case, and the
whole pipeline token for token against ``generate()``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2ForCausalLM


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class ExportDecoder(nn.Module):
    """inputs_embeds (B, S, D), attention_mask (B, P+S) i64, position_ids (B, S) i64,
    past: 2L tensors (B, KV, P, hd) as key0, value0, key1, ...
    -> logits (B, 1, V) of the last position, then 2L present tensors (B, KV, S, hd): the new
    positions' keys (after RoPE) and values."""

    def __init__(self, language_model: Qwen2ForCausalLM) -> None:
        super().__init__()
        config = language_model.config
        core = language_model.model
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.eps = config.rms_norm_eps
        self.scaling = self.head_dim ** -0.5
        self.intermediate = config.intermediate_size
        rotary = core.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.attention_scaling = float(rotary.attention_scaling)
        # Fused weights, built once from the model's own tensors (the model is not modified).
        self.qkv_weight = nn.ParameterList()
        self.qkv_bias = nn.ParameterList()
        self.o_weight = nn.ParameterList()
        self.gate_up_weight = nn.ParameterList()
        self.down_weight = nn.ParameterList()
        self.input_norm = nn.ParameterList()
        self.post_norm = nn.ParameterList()
        for layer in core.layers:
            a, m = layer.self_attn, layer.mlp
            self.qkv_weight.append(nn.Parameter(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t()
                                                .contiguous().detach(), requires_grad=False))
            self.qkv_bias.append(nn.Parameter(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach(),
                                              requires_grad=False))
            self.o_weight.append(nn.Parameter(a.o_proj.weight.t().contiguous().detach(), requires_grad=False))
            self.gate_up_weight.append(nn.Parameter(torch.cat([m.gate_proj.weight, m.up_proj.weight]).t()
                                                    .contiguous().detach(), requires_grad=False))
            self.down_weight.append(nn.Parameter(m.down_proj.weight.t().contiguous().detach(), requires_grad=False))
            self.input_norm.append(nn.Parameter(layer.input_layernorm.weight.detach(), requires_grad=False))
            self.post_norm.append(nn.Parameter(layer.post_attention_layernorm.weight.detach(), requires_grad=False))
        self.final_norm = nn.Parameter(core.norm.weight.detach(), requires_grad=False)
        self.lm_head = nn.Parameter(language_model.lm_head.weight.t().contiguous().detach(), requires_grad=False)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        batch, seq, _ = inputs_embeds.shape
        past_len = past[0].shape[2]
        kv, groups, hd = self.num_kv_heads, self.groups, self.head_dim
        q_size, kv_size = self.num_heads * hd, kv * hd

        # RoPE tables, as Qwen2RotaryEmbedding computes them: (B, S, 1, hd)
        freqs = position_ids[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * self.attention_scaling)[:, :, None, :]
        sin = (angles.sin() * self.attention_scaling)[:, :, None, :]
        # rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin2): the same products, exactly
        half = hd // 2
        sin_first, sin_second = torch.split(sin, [half, half], dim=-1)
        signed_sin = torch.cat((-sin_first, sin_second), dim=-1)

        # Which keys each grouped query row (g, i) may see; rows are group-major: (B, 1, G*S, ...)
        allowed = attention_mask > 0
        past_allowed = allowed[:, None, None, :past_len]  # (B, 1, 1, P)
        steps = torch.arange(seq, device=inputs_embeds.device)
        causal = (steps[None, :] <= steps[:, None]).repeat(groups, 1)  # (G*S, S)
        new_allowed = causal[None, None] & allowed[:, None, None, past_len:]  # (B, 1, G*S, S)
        lowest = torch.finfo(torch.float32).min

        hidden = inputs_embeds  # (B, S, D)
        presents = []
        for i in range(self.num_layers):
            x = _rms_norm(hidden, self.input_norm[i], self.eps)
            qkv = x @ self.qkv_weight[i] + self.qkv_bias[i]  # (B, S, (H + 2KV) hd)
            qk, v = torch.split(qkv, [q_size + kv_size, kv_size], dim=-1)
            qk = qk.reshape(batch, seq, self.num_heads + kv, hd)
            qk_first, qk_second = torch.split(qk, [half, half], dim=-1)
            qk = qk * cos + torch.cat((qk_second, qk_first), dim=-1) * signed_sin  # RoPE, query and key heads at once
            q, k = torch.split(qk, [self.num_heads, kv], dim=2)
            # (B, S, KV, G, hd) -> (B, KV, G, S, hd) -> (B, KV, G*S, hd): query heads of one K/V head
            q = q.reshape(batch, seq, kv, groups, hd).permute(0, 2, 3, 1, 4).reshape(batch, kv, groups * seq, hd)
            k = k.transpose(1, 2)  # (B, KV, S, hd)
            v = v.reshape(batch, seq, kv, hd).transpose(1, 2)
            past_k, past_v = past[2 * i], past[2 * i + 1]  # (B, KV, P, hd)
            scores_past = torch.where(past_allowed, (q @ past_k.transpose(2, 3)) * self.scaling, lowest)
            scores_new = torch.where(new_allowed, (q @ k.transpose(2, 3)) * self.scaling, lowest)
            weights = torch.softmax(torch.cat((scores_past, scores_new), dim=-1), dim=-1)  # (B, KV, G*S, P+S)
            weights_past, weights_new = torch.split(weights, [past_len, seq], dim=-1)
            attended = weights_past @ past_v + weights_new @ v  # (B, KV, G*S, hd)
            attended = attended.reshape(batch, kv, groups, seq, hd).permute(0, 3, 1, 2, 4).reshape(batch, seq, q_size)
            hidden = hidden + attended @ self.o_weight[i]
            x = _rms_norm(hidden, self.post_norm[i], self.eps)
            gate_up = x @ self.gate_up_weight[i]  # (B, S, 2I)
            gate, up = torch.split(gate_up, [self.intermediate, self.intermediate], dim=-1)
            hidden = hidden + (torch.nn.functional.silu(gate) * up) @ self.down_weight[i]
            presents += [k, v]
        last = _rms_norm(hidden[:, -1:], self.final_norm, self.eps)  # (B, 1, D)
        return (last @ self.lm_head, *presents)
