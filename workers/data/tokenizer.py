"""Train a byte-level BPE tokenizer and wrap it as a `transformers` fast tokenizer."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
# Keys `from_pretrained` leaves on a tokenizer that say how it was loaded, not what it is.
LOADER_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir", "revision",
               "subfolder", "token", "trust_remote_code")


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                    model_max_length: int | None = None):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (deterministic).

    Ids 0, 1, 2 are BOS, EOS and PAD. Encoding adds BOS in front (as Llama tokenizers do; pass
    `add_special_tokens=False` for raw ids). Decoding round-trips any text exactly, since there is
    no normaliser and the byte-level alphabet covers every byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos)])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False, **kwargs)


def encode_plain(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (batched through the Rust tokenizer)."""
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """`save_pretrained` without loader-only keys, so a loaded-and-saved tokenizer has the same bytes."""
    tokenizer.save_pretrained(directory)
    config_file = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for key in LOADER_KEYS:
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
