"""The GRPO-family policy loss: clipped ratio (asymmetric, optional dual clip), KL, entropy, TIS, aggregation.

All tensors are per token, [batch, response_len], with `mask` 1 on response tokens that carry loss.
Advantages may be per sequence [batch] (broadcast over tokens) or per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence"), with log r = log pi_ref - log pi:
    k1 = -log r,  k2 = (log r)^2 / 2,  k3 = (r - 1) - log r."""
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")


def aggregate(values: Tensor, mask: Tensor, mode: str = "token-mean", norm_tokens: int | None = None) -> Tensor:
    """Reduce per-token values [B, T] to a scalar.

    token-mean:              sum_ij m_ij v_ij / sum_ij m_ij  (DAPO: every token counts the same)
    seq-mean-token-mean:     1/B sum_i (sum_j m_ij v_ij / sum_j m_ij)  (original GRPO)
    seq-mean-token-sum-norm: 1/B sum_i sum_j m_ij v_ij / L  (Dr. GRPO: L a constant, default T)
    Sequences without any masked-in token count as zero in the sequence means.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return per_seq.mean()
    if mode == "seq-mean-token-sum-norm":
        length = norm_tokens if norm_tokens is not None else values.shape[1]
        return (values * mask).sum(dim=1).mean() / length
    raise ValueError(f"loss aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at every position, [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class LossParts:
    """The loss to differentiate and its detached components (for metrics)."""

    loss: Tensor
    pg_loss: Tensor
    kl: Tensor
    entropy: Tensor
    clip_frac_low: Tensor
    clip_frac_high: Tensor
    dual_clip_frac: Tensor
    ratio_mean: Tensor
    tis_weight_mean: Tensor


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip_c: float | None = None,
                aggregation: str = "token-mean", norm_tokens: int | None = None,
                ref_logp: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy: Tensor | None = None, entropy_coef: float = 0.0,
                rollout_logp: Tensor | None = None, tis_cap: float | None = None) -> LossParts:
    """PPO-clip surrogate with GRPO's group advantages and the usual switches.

    Per token, with ratio rho = exp(logp - old_logp):
      pg = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))        (PPO eq. 7; DAPO clip-higher)
      dual clip (A < 0): pg = min(pg, -A c)                             (Ye et al. 2020, eq. 5)
      TIS: pg *= min(exp(old_logp - rollout_logp), C), detached       (truncated importance sampling)
    loss = agg(pg) + kl_coef agg(KL_k(pi, pi_ref)) - entropy_coef agg(H)
    """
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(logp)
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    pg = torch.maximum(pg1, pg2)
    low = (advantages < 0) & (ratio < 1.0 - clip_eps_low)
    high = (advantages > 0) & (ratio > 1.0 + clip_eps_high)
    dual = torch.zeros_like(low)
    if dual_clip_c is not None:
        pg3 = -advantages * dual_clip_c
        dual = (advantages < 0) & (pg > pg3)
        pg = torch.where(advantages < 0, torch.minimum(pg, pg3), pg)
    tis = torch.ones_like(logp)
    if tis_cap is not None:
        if rollout_logp is None:
            raise ValueError("policy_loss: tis_cap needs rollout_logp")
        tis = torch.exp(old_logp - rollout_logp).clamp(max=tis_cap).detach()
        pg = pg * tis
    pg_loss = aggregate(pg, mask, aggregation, norm_tokens)
    loss = pg_loss
    kl = torch.zeros((), dtype=logp.dtype)
    if ref_logp is not None:
        kl_tokens = kl_estimate(logp, ref_logp, kl_estimator)
        kl = aggregate(kl_tokens, mask, aggregation, norm_tokens)
        if kl_coef:
            loss = loss + kl_coef * kl
    ent = torch.zeros((), dtype=logp.dtype)
    if entropy is not None:
        ent = aggregate(entropy, mask, aggregation, norm_tokens)
        if entropy_coef:
            loss = loss - entropy_coef * ent
    frac = lambda flags: (flags.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1.0)  # noqa: E731
    return LossParts(loss=loss, pg_loss=pg_loss.detach(), kl=kl.detach(), entropy=ent.detach(),
                     clip_frac_low=frac(low).detach(), clip_frac_high=frac(high).detach(),
                     dual_clip_frac=frac(dual).detach(), ratio_mean=frac(ratio).detach(),
                     tis_weight_mean=frac(tis).detach())
