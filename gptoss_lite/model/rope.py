"""Rotary position embedding with YaRN scaling, as gpt-oss uses it.

Frequencies below `low` keep their original value, those above `high` are divided by the
scaling factor, and the ones in between are blended linearly (`truncate=False`: low and high are
NOT rounded). cos and sin are both multiplied by the YaRN concentration 0.1·ln(factor) + 1.
Pairs are NeoX half-split: dimension j rotates with dimension j + head_dim/2.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def yarn_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] (float32) and the concentration (mscale)."""
    d = config.head_dim
    base, factor = config.rope_theta, config.rope_factor
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    concentration = 0.1 * math.log(factor) + 1.0

    def boundary(beta: float) -> float:
        turns = config.rope_original_context / (beta * 2 * math.pi)
        return d / 2 * math.log(turns) / math.log(base)

    low, high = boundary(config.rope_beta_fast), boundary(config.rope_beta_slow)
    if config.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    # Only small test geometries reach these bounds (gpt-oss: low 8.09, high 17.40); HF clamps.
    low, high = max(low, 0), min(high, d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: original frequency, 0: interpolated (divided by factor)
    inv_freq = keep / freq + (1 - keep) / (factor * freq)
    return inv_freq.to(torch.float32), concentration


class Rotary:
    """cos/sin tables for positions, and their application to q or k."""

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu"):
        inv_freq, self.concentration = yarn_inv_freq(config)
        self.inv_freq = inv_freq.to(device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos, sin [T, head_dim/2] for absolute positions [T], computed in float32."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        c = self.concentration
        return (angles.cos() * c).to(dtype), (angles.sin() * c).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, head_dim] with cos/sin [T, head_dim/2] (half-split pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
