"""Batched log-likelihood of token sequences: the forward pass every scoring evaluator shares."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bitsmith.platform.errors import DataError

# (tokens, n_scored): score the log-probability of the last `n_scored` tokens of `tokens`, each
# conditioned on everything before it in `tokens`.
ScoredSequence = tuple[list[int], int]


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, V] of a causal LM, without building a KV cache."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits


# Causal LMs whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no soft-capping or
# scaling after the head, so the head can be applied to the scored positions only, in slices.
PLAIN_HEAD_MODELS = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
HEAD_ROWS = 1024  # positions per lm_head slice: bounds the [rows, vocab] logits held at once


def target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                    plain_head: bool | None = None) -> torch.Tensor:
    """log p(targets[b, t] | input_ids[b, :t+1]) as fp32 [B, T]; 0 where the target is -100 (not scored).

    For plain-head models the vocabulary projection runs only on scored positions, `HEAD_ROWS` at a
    time, so the [B, T, V] logits are never materialised (large vocabularies, long contexts);
    other models take one full forward and a fused cross-entropy. Both give the same numbers.
    """
    if plain_head is None:
        plain_head = type(model).__name__ in PLAIN_HEAD_MODELS
    if not plain_head:
        logits = forward_logits(model, input_ids).float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
        return -nll.view(targets.shape)
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    scored = targets != -100
    rows, wanted = hidden[scored], targets[scored]
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    parts = []
    for start in range(0, rows.shape[0], HEAD_ROWS):
        logits = head(rows[start:start + HEAD_ROWS]).float()
        picked = logits.gather(1, wanted[start:start + HEAD_ROWS, None])[:, 0]
        parts.append(picked - torch.logsumexp(logits, dim=-1))
    if parts:
        out[scored] = torch.cat(parts)
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first (stable: ties keep data order) to limit padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def score_sequences(model: torch.nn.Module, sequences: Sequence[ScoredSequence], batch_size: int = 8,
                    pad_id: int = 0, on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Sum of log p(token | prefix) over the last `n_scored` tokens of each sequence.

    Batches are right-padded: in a causal model padding after the real tokens cannot change them,
    so no attention mask is needed (this is also what lm-evaluation-harness does).
    """
    device = next(model.parameters()).device
    results = [0.0] * len(sequences)
    for batch in length_sorted_batches([len(s[0]) for s in sequences], batch_size):
        width = max(len(sequences[i][0]) for i in batch) - 1
        inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            tokens, n_scored = sequences[i]
            if not 1 <= n_scored < len(tokens):
                raise DataError(f"sequence {i}: n_scored={n_scored} with {len(tokens)} tokens; "
                                "expected at least one context token")
            ids = torch.tensor(tokens, dtype=torch.long)
            inputs[row, : len(tokens) - 1] = ids[:-1]
            targets[row, len(tokens) - 1 - n_scored: len(tokens) - 1] = ids[len(tokens) - n_scored:]
        sums = target_logprobs(model, inputs.to(device), targets.to(device)).double().sum(dim=1).tolist()
        for row, i in enumerate(batch):
            results[i] = sums[row]
        if on_batch is not None:
            on_batch(len(batch))
    return results
