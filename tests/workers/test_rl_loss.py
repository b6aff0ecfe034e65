"""GRPO building blocks against their formulas: advantages, clipping, KL estimators, aggregation, TIS, rewards."""
from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from pydantic import ValidationError

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs import load_spec, canonical_json
from bitsmith.platform.specs.rl import Aggregation, RewardName, RLSpec
from bitsmith.workers.grpo.advantages import apply_polarity, group_advantages, sanity_rewards, zero_variance_groups
from bitsmith.workers.grpo.loss import AGGREGATIONS, aggregate, kl_estimate, policy_loss, token_entropy
from bitsmith.workers.grpo.rewards import REWARDS, get_reward, reward_identity, score


def test_group_advantages_with_and_without_std_normalisation():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    adv = group_advantages(rewards, normalize_std=True, eps=1e-6)
    for row, r in zip(adv, rewards):
        mean, std = sum(r.tolist()) / 4, statistics_std(r.tolist())
        assert torch.allclose(row, torch.tensor([(x - mean) / (std + 1e-6) for x in r.tolist()]), atol=1e-6)
    assert torch.equal(adv[1], torch.zeros(4))
    dr = group_advantages(rewards, normalize_std=False)  # Dr. GRPO: centred only
    assert torch.allclose(dr, rewards - rewards.mean(1, keepdim=True))
    assert zero_variance_groups(rewards).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.ones(3, 1))


def statistics_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_polarity_keeps_one_sign():
    adv = torch.tensor([1.5, -0.5, 0.0, -2.0])
    assert apply_polarity(adv, "both").tolist() == adv.tolist()
    assert apply_polarity(adv, "positive").tolist() == [1.5, 0.0, 0.0, 0.0]
    assert apply_polarity(adv, "negative").tolist() == [0.0, -0.5, 0.0, -2.0]


def test_sanity_rewards_random_inverted_shuffled():
    rewards = torch.arange(12, dtype=torch.float64).view(3, 4)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(sanity_rewards(rewards, "none", gen()), rewards)
    assert torch.equal(sanity_rewards(rewards, "inverted", gen()), -rewards)
    shuffled = sanity_rewards(rewards, "shuffled", gen())
    assert sorted(shuffled.flatten().tolist()) == rewards.flatten().tolist()
    assert not torch.equal(shuffled, rewards)
    random = sanity_rewards(rewards, "random", gen())
    assert set(random.flatten().tolist()) <= {0.0, 1.0}
    assert torch.equal(random, sanity_rewards(rewards, "random", gen()))


def test_kl_estimators_match_their_formulas_and_k3_is_unbiased():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    log_r = ref - logp
    assert torch.allclose(kl_estimate(logp, ref, "k1"), logp - ref)
    assert torch.allclose(kl_estimate(logp, ref, "k2"), 0.5 * log_r ** 2)
    assert torch.allclose(kl_estimate(logp, ref, "k3"), torch.exp(log_r) - 1 - log_r)
    # E_{x~p}[k1] = E[k3] = KL(p || q) on a categorical distribution
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        assert float((p * kl_estimate(p.log(), q.log(), est)).sum()) == pytest.approx(exact, rel=1e-5)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(aggregate(values, mask, "token-mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(aggregate(values, mask, "seq-mean-token-mean")) == pytest.approx(((1 + 2 + 3) / 3 + 4) / 2)
    assert float(aggregate(values, mask, "seq-mean-token-sum-norm")) == pytest.approx((6 + 4) / 2 / 4)
    assert float(aggregate(values, mask, "seq-mean-token-sum-norm", norm_tokens=10)) == pytest.approx(10 / 2 / 10)
    assert set(AGGREGATIONS) == set(get_args(Aggregation))


def reference_pg(logp, old, adv, eps_low, eps_high, dual_c=None):
    """Per-token PPO-clip loss written out scalar by scalar."""
    out = []
    for lp, o, a in zip(logp.tolist(), old.tolist(), adv.tolist()):
        ratio = math.exp(lp - o)
        loss = max(-a * ratio, -a * min(max(ratio, 1 - eps_low), 1 + eps_high))
        if dual_c is not None and a < 0:
            loss = min(loss, -a * dual_c)
        out.append(loss)
    return torch.tensor(out)


@pytest.mark.parametrize("eps_low,eps_high,dual_c", [(0.2, 0.2, None), (0.2, 0.28, None), (0.2, 0.28, 3.0)])
def test_clipped_surrogate_matches_formula_and_counts_clips(eps_low, eps_high, dual_c):
    old = torch.zeros(8)
    logp = torch.log(torch.tensor([0.5, 0.9, 1.1, 1.25, 1.5, 0.7, 5.0, 0.1]))
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -2.0, -1.0])
    mask = torch.ones(1, 8)
    parts = policy_loss(logp[None], old[None], adv[None], mask, clip_eps_low=eps_low, clip_eps_high=eps_high,
                        dual_clip_c=dual_c)
    expected = reference_pg(logp, old, adv, eps_low, eps_high, dual_c)
    assert float(parts.loss) == pytest.approx(float(expected.mean()), rel=1e-6)
    ratio = logp.exp()
    assert float(parts.clip_frac_high) == pytest.approx(float(((adv > 0) & (ratio > 1 + eps_high)).float().mean()))
    assert float(parts.clip_frac_low) == pytest.approx(float(((adv < 0) & (ratio < 1 - eps_low)).float().mean()))
    dual = 1 / 8 if dual_c is not None else 0.0  # only the ratio-5 token with A < 0 exceeds c = 3
    assert float(parts.dual_clip_frac) == pytest.approx(dual)


def test_gradient_vanishes_where_clipped_and_is_minus_advantage_on_policy():
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0]])  # per token
    policy_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_eps_low=0.2, clip_eps_high=0.2).loss.backward()
    # token 0: A>0 and ratio above 1+eps -> clipped (no gradient); token 2: A<0, ratio below 1-eps -> clipped
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0
    assert float(logp.grad[0, 1]) == pytest.approx(-1.0 / 3)  # d(-A * ratio)/dlogp = -A * ratio, token-mean /3


def test_kl_entropy_and_tis_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    logp_all = torch.log_softmax(logits, -1)
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0]])
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    ref = logp - 0.3
    rollout = logp + torch.tensor([[0.5, -0.5, 0.0], [1.0, -2.0, 0.1]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    entropy = token_entropy(logits)
    assert torch.allclose(entropy, -(logp_all.exp() * logp_all).sum(-1))
    base = policy_loss(logp, logp, adv, mask)
    full = policy_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.1, kl_estimator="k1", entropy=entropy,
                       entropy_coef=0.01)
    assert float(full.kl) == pytest.approx(0.3, rel=1e-5)
    assert float(full.entropy) == pytest.approx(float(aggregate(entropy, mask)), rel=1e-6)
    assert float(full.loss) == pytest.approx(float(base.loss) + 0.1 * 0.3 - 0.01 * float(full.entropy), rel=1e-5)
    tis = policy_loss(logp, logp, adv, mask, rollout_logp=rollout, tis_cap=2.0)
    weights = torch.exp(logp - rollout).clamp(max=2.0)
    pg = -adv[:, None] * torch.ones_like(logp)
    assert float(tis.loss) == pytest.approx(float(aggregate(pg * weights, mask)), rel=1e-6)
    assert float(tis.tis_weight_mean) == pytest.approx(float(aggregate(weights, mask)), rel=1e-6)
    with pytest.raises(ValueError, match="rollout_logp"):
        policy_loss(logp, logp, adv, mask, tis_cap=2.0)


def test_reward_registry_matches_spec_and_scores():
    assert set(REWARDS) == set(get_args(RewardName))
    assert get_reward("exact_numeric")("The answer is 1,234.", "1234") == 1.0
    assert get_reward("exact_numeric")(" 12", "13") == 0.0
    assert get_reward("exact_numeric")(" no number", "13") == 0.0
    assert get_reward("boxed")("so \\boxed{42}.", "42") == 1.0 and get_reward("boxed")(" 42", "42") == 0.0
    assert get_reward("format")(" 42", "x") == 1.0
    assert get_reward("format")(" 4 and 2", "x") == 0.0 and get_reward("format")("x \\boxed{4}", "x") == 1.0
    totals, per_term = score([" 7", " 8"], ["7", "7"], [("exact_numeric", 1.0), ("format", 0.5)])
    assert totals == [1.5, 0.5] and per_term["exact_numeric"] == [1.0, 0.0]
    ids = reward_identity(["exact_numeric", "format", "exact_numeric"])
    assert list(ids) == ["exact_numeric", "format"] and all(len(h) == 64 for h in ids.values())
    assert ids["exact_numeric"] != ids["format"]
    with pytest.raises(SpecError, match="expected one of boxed, exact_numeric, format"):
        get_reward("nope")


def test_rl_spec_defaults_validation_and_resolved_config():
    spec = RLSpec.model_validate({"kind": "rl", "inputs": {"policy": "m", "data": "d"}})
    assert spec.loss.aggregation == "token-mean" and spec.loss.normalize_std and spec.loss.clip_eps_low == 0.2
    assert spec.loss.clip_eps_high == 0.2 and spec.loss.kl.coef == 0.0 and spec.sampling.dynamic_sampling
    resolved = canonical_json(spec)
    assert '"aggregation":"token-mean"' in resolved and '"estimator":"k3"' in resolved
    with pytest.raises(ValidationError):
        RLSpec.model_validate({"kind": "rl", "inputs": {"policy": "m", "data": "d"}, "loss": {"aggregation": "sum"}})
    with pytest.raises(ValidationError):
        RLSpec.model_validate({"kind": "rl", "inputs": {"policy": "m"}})
    with pytest.raises(ValidationError, match="ppo.minibatches"):
        RLSpec.model_validate({"kind": "rl", "inputs": {"policy": "m", "data": "d"}, "ppo": {"minibatches": 10_000}})
    one_example = load_spec(base={"kind": "rl", "inputs": {"policy": "m", "data": "d"}},
                            overrides=["data.limit_prompts=1", "rollout.quantize.type=rtn"])
    assert one_example.data.limit_prompts == 1 and one_example.rollout.quantize.bits == 4


def test_top_p_keeps_the_smallest_nucleus():
    from bitsmith.workers.grpo.rollout import top_p_filter

    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    assert torch.equal(top_p_filter(probs, 1.0), probs)
    assert torch.allclose(top_p_filter(probs, 0.7), torch.tensor([[0.0, 0.5, 0.0, 0.25]]))  # 0.5 + 0.25 >= 0.7
    assert torch.allclose(top_p_filter(probs, 0.75), torch.tensor([[0.0, 0.5, 0.0, 0.25]]))
    assert torch.allclose(top_p_filter(probs, 0.3), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
