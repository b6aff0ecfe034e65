"""Turn tokenized data into fixed training examples, batches in a seeded order, and a unigram baseline."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bitsmith.platform.errors import DataError

from .tokenizer import encode_plain

IGNORE = -100  # label of a position that carries no loss


@dataclass(frozen=True)
class TokenBlocks:
    """N examples of equal (padded) length. `labels[i, t]` is the token at t, or IGNORE (HF convention:
    the loss at position t predicts `labels[i, t + 1]`)."""

    input_ids: torch.Tensor  # [N, L] int64
    labels: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L] int64

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, indices: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """The rows `indices`, trimmed to their longest unpadded length."""
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max())
        return {"input_ids": self.input_ids[index, :width], "labels": self.labels[index, :width],
                "attention_mask": mask[:, :width]}

    def target_count(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def pack_documents(token_lists: list[list[int]], seq_len: int, bos_id: int, eos_id: int) -> TokenBlocks:
    """Concatenate `BOS doc EOS BOS doc EOS ...` and cut it into blocks of `seq_len` (remainder dropped)."""
    stream: list[int] = []
    for ids in token_lists:
        stream.append(bos_id)
        stream.extend(ids)
        stream.append(eos_id)
    n = len(stream) // seq_len
    blocks = torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return TokenBlocks(blocks, blocks.clone(), torch.ones_like(blocks))


def sft_examples(records: list[dict[str, Any]], tokenizer, seq_len: int, *,
                 loss_on_prompt: bool = False) -> TokenBlocks:
    """Examples `[BOS] prompt " " answer EOS`, right-padded; labels only on the answer (+ EOS).

    Prompt and answer are tokenized separately, as greedy generation from the prompt would see them.
    Examples longer than `seq_len` lose tokens from the left (the answer is kept).
    """
    if tokenizer.eos_token_id is None:
        raise DataError("sft: the model's tokenizer has no EOS token; expected one to end answers")
    if not records:
        raise DataError("sft: no prompt/answer records; expected a non-empty split")
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = encode_plain(tokenizer, [r["prompt"] for r in records])
    answers = encode_plain(tokenizer, [" " + r["answer"] for r in records])
    rows: list[tuple[list[int], list[int]]] = []
    for p, a in zip(prompts, answers):
        target = a + [tokenizer.eos_token_id]
        head = prefix + p
        ids = head + target
        labels = (list(head) if loss_on_prompt else [IGNORE] * len(head)) + target
        rows.append((ids[-seq_len:], labels[-seq_len:]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return TokenBlocks(input_ids, labels, mask)


def batch_indices(step: int, batch_size: int, n_examples: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based): a fresh seeded permutation every epoch.

    A pure function of (step, seed), so a resumed run sees exactly the batches it would have seen.
    """
    return permuted_stream(step * batch_size, batch_size, n_examples, lambda epoch: seed * 1_000_003 + epoch)


def permuted_stream(start: int, count: int, n: int, epoch_seed: Callable[[int], int]) -> list[int]:
    """Positions `start .. start + count` of an endless stream of epochs, epoch e being
    `seeded_permutation(n, epoch_seed(e))`: every index once per epoch, in a seeded order."""
    out = []
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        out.append(int(seeded_permutation(n, epoch_seed(epoch))[pos]))
    return out


@functools.lru_cache(maxsize=64)
def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """`torch.randperm(n)` drawn from a CPU generator seeded with `seed` (read-only; cached)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def unigram_ppl(train: TokenBlocks, held_out: TokenBlocks, vocab_size: int) -> float:
    """Perplexity of the held-out targets under training-target unigram frequencies, add-one smoothed."""
    train_targets = train.labels[:, 1:]
    counts = torch.bincount(train_targets[train_targets != IGNORE], minlength=vocab_size).double()
    log_p = torch.log((counts + 1) / (counts.sum() + vocab_size))
    targets = held_out.labels[:, 1:]
    targets = targets[targets != IGNORE]
    return math.exp(-float(log_p[targets].mean()))
