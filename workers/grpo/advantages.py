"""Group-relative advantages, sample-polarity weighting and the reward-sanity controls."""
from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A_ij = (R_ij - mean_j R_ij) / (std_j R_ij + eps) for rewards [groups, group_size].

    GRPO (Shao et al. 2024, eq. 3 with outcome supervision) uses the (unbiased) group std; Dr. GRPO
    (Liu et al. 2025) drops the division (`normalize_std=False`) to remove the difficulty bias.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, group_size >= 2]; got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def zero_variance_groups(rewards: Tensor) -> Tensor:
    """Bool [groups]: every response of the group got the same reward (no learning signal)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def apply_polarity(advantages: Tensor, polarity: str) -> Tensor:
    """Keep the samples of one sign: `positive` (PSR), `negative` (NSR, Zhu et al. 2025) or `both`."""
    if polarity == "both":
        return advantages
    if polarity == "positive":
        return advantages * (advantages > 0)
    if polarity == "negative":
        return advantages * (advantages < 0)
    raise ValueError(f"polarity {polarity!r}; expected one of both, positive, negative")


def sanity_rewards(rewards: Tensor, mode: str, generator: torch.Generator) -> Tensor:
    """Rewards for a control run: `random` (Bernoulli(0.5) in {0, 1}), `inverted` (-R), `shuffled`
    (R permuted across the whole batch, so no reward belongs to its response), or `none` (R as is)."""
    if mode == "none":
        return rewards
    if mode == "random":
        return torch.randint(0, 2, rewards.shape, generator=generator).to(rewards.dtype)
    if mode == "inverted":
        return -rewards
    if mode == "shuffled":
        flat = rewards.reshape(-1)
        return flat[torch.randperm(flat.numel(), generator=generator)].reshape(rewards.shape)
    raise ValueError(f"reward_sanity {mode!r}; expected one of none, random, inverted, shuffled")
