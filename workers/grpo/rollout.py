"""Rollouts: the worker that samples response groups from synced (optionally quantized) weights, and the
packing and log-prob helpers the learner shares with it.

`RolloutWorker` is what `rl` jobs hand to `ctx.actor_pool`: a Ray actor under the ray executor, a
plain object in-process under the local executor. It never imports ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bitsmith.kernels.quantizers import quantize_rtn
from bitsmith.workers.evaluators.generation import left_pad


@dataclass
class RolloutBatch:
    """N sampled responses to G prompts: prompts left-padded [G, P], responses right-padded [N, R],
    `group_of[i]` the prompt row of response i."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    group_of: Tensor

    @classmethod
    def pack(cls, prompts: list[list[int]], responses: list[list[int]], group_of: list[int], pad_id: int,
             ) -> "RolloutBatch":
        prompt_ids, prompt_mask = left_pad(prompts, pad_id)
        width = max(1, max(len(r) for r in responses))
        ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(responses), width), dtype=torch.long)
        for i, r in enumerate(responses):
            if r:
                ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, :len(r)] = 1
        return cls(prompt_ids, prompt_mask, ids, mask, torch.tensor(group_of, dtype=torch.long))

    def to(self, device: torch.device) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.response_ids,
                                                     self.response_mask, self.group_of)))


def response_logprobs(model: torch.nn.Module, batch: RolloutBatch, rows: Tensor | None = None,
                      temperature: float = 1.0, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs [n, R] of the responses `rows` (default all) under softmax(logits / temperature), and
    their entropy.

    Each distinct prompt is run once and its KV cache shared by all of its responses (gradients flow
    through the shared cache), so a group of G responses costs one prompt forward, not G. Position ids
    count only attended tokens, as `generate` does with left padding.
    """
    rows = torch.arange(batch.response_ids.shape[0], device=batch.response_ids.device) if rows is None else rows
    prompts, inverse = torch.unique(batch.group_of[rows], return_inverse=True)
    p_ids, p_mask = batch.prompt_ids[prompts], batch.prompt_mask[prompts]
    r_mask = batch.response_mask[rows]
    width = int(r_mask.sum(1).max().clamp(min=1))
    r_ids, r_mask = batch.response_ids[rows, :width], r_mask[:, :width]
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1][inverse][:, None]  # predicts response token 0
    if width > 1:
        cache = out.past_key_values
        cache.batch_select_indices(inverse)
        positions = p_mask.sum(1)[inverse][:, None] + torch.arange(width - 1, device=r_ids.device)
        rest = model(input_ids=r_ids[:, :-1], attention_mask=torch.cat([p_mask[inverse], r_mask[:, :-1]], 1),
                     position_ids=positions, past_key_values=cache, use_cache=True).logits
        logits = torch.cat([logits, rest], 1)
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, r_ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    full = batch.response_ids.shape[1]
    if width < full:  # back to the batch's width (padding carries no loss)
        logp = torch.nn.functional.pad(logp, (0, full - width))
        entropy = torch.nn.functional.pad(entropy, (0, full - width)) if entropy is not None else None
    return logp, entropy


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Zero all but the smallest set of most likely tokens whose probability reaches `top_p` (nucleus)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before this token already >= top_p
    return probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))


@torch.no_grad()
def sample_responses(model: torch.nn.Module, prompts: list[list[int]], n: int, max_new_tokens: int,
                     temperature: float, top_p: float, eos_id: int, pad_id: int, generator: torch.Generator,
                     ) -> tuple[Tensor, Tensor]:
    """`n` sampled continuations of each prompt (prompt-major) and their log-probs under softmax(logits / T):
    ([len(prompts) * n, steps] token ids, padded with `pad_id` after EOS; same-shape log-probs).

    Each prompt is prefilled once and its KV cache shared by its `n` samples; sampling draws from
    `generator` only, so the result is a pure function of the weights, the prompts and the seed.
    """
    ids, mask = left_pad(prompts, pad_id)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, 0)
    mask = mask.repeat_interleave(n, 0)
    first_position = mask.sum(1, keepdim=True)
    done = torch.zeros(mask.shape[0], dtype=torch.bool)
    tokens, logps = [], []
    for step in range(max_new_tokens):
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
        token = torch.multinomial(top_p_filter(logp_all.exp(), top_p), 1, generator=generator).squeeze(1)
        token = token.masked_fill(done, pad_id)
        tokens.append(token)
        logps.append(logp_all.gather(1, token[:, None]).squeeze(1))
        done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=first_position + step,
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(logps, 1)


@torch.no_grad()
def quantize_linear_weights(model: torch.nn.Module, bits: int, group_size: int | None, symmetric: bool,
                            skip: tuple[str, ...] = ("lm_head",)) -> dict[str, float]:
    """Replace every Linear weight (but `skip`) by its RTN-quantized-dequantized value; returns error stats."""
    squared, total, layers = 0.0, 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] in skip:
            continue
        weight = module.weight
        g = group_size if group_size is not None and weight.shape[1] % group_size == 0 else None
        deq = quantize_rtn(weight.detach(), bits=bits, group_size=g, symmetric=symmetric).dequantize(weight.dtype)
        squared += float((deq - weight).float().square().sum())
        total += weight.numel()
        layers += 1
        weight.copy_(deq)
    return {"quant_layers": float(layers), "quant_rmse": (squared / max(total, 1)) ** 0.5}


class RolloutWorker:
    """Holds a copy of the policy; `load_weights` syncs it, `generate` samples groups of responses."""

    def __init__(self, policy_dir: str, threads: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16, quantize: dict[str, Any] | None = None):
        from bitsmith.workers.models import load_model_and_tokenizer

        torch.set_num_threads(threads)
        self.model, self.tokenizer = load_model_and_tokenizer(policy_dir)
        self.model.requires_grad_(False)
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.quantize = quantize
        self.version = -1
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def load_weights(self, state: dict[str, Tensor], version: int) -> dict[str, float]:
        """Copy the learner's state_dict in (then quantize it if configured); returns quantization stats."""
        self.model.load_state_dict(state, strict=True)
        self.version = version
        if self.quantize is not None:
            return quantize_linear_weights(self.model, self.quantize["bits"], self.quantize["group_size"],
                                           self.quantize["symmetric"])
        return {}

    @torch.no_grad()
    def generate(self, job: dict[str, Any]) -> dict[str, Any]:
        """`job`: {"prompts": [[ids]], "n": group size, "seed": int}. Returns per sample (prompt-major):
        response ids (up to and including EOS), their log-probs under this worker's model, and whether the
        response was cut at max_new_tokens."""
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(job["seed"])
        new, logp = sample_responses(self.model, job["prompts"], job["n"], self.max_new_tokens, self.temperature,
                                     self.top_p, self.eos_id, self.pad_id, generator)
        responses, logprobs, truncated = [], [], []
        for row in range(new.shape[0]):  # a response ends with (and includes) its EOS
            tokens = new[row].tolist()
            end = tokens.index(self.eos_id) + 1 if self.eos_id in tokens else len(tokens)
            responses.append(tokens[:end])
            logprobs.append(logp[row, :end].tolist())
            truncated.append(self.eos_id not in tokens[:end])
        return {"responses": responses, "logprobs": logprobs, "truncated": truncated, "version": self.version,
                "seconds": time.perf_counter() - start}
