"""A CLIP-compatible byte-level BPE tokenizer, trained locally on the shapes grammar.

It is a stock ``transformers.CLIPTokenizer`` (same normalizer, pre-tokenizer, ``</w>`` word
suffix, ``<|startoftext|>``/``<|endoftext|>`` specials), so SDXL pipelines use it unchanged. Its
vocabulary is CLIP's layout: the 256 byte symbols, the same 256 with ``</w>``, the merges learned
here, then the two specials. Because every byte is in the vocabulary, any text (emoji, CJK, a
500-word caption) tokenizes; the grammar's words are single tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 600, model_max_length: int = 16):
    """Learn BPE merges on ``corpus`` and wrap them as a ``CLIPTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # An empty CLIPTokenizer carries CLIP's exact normalizer and pre-tokenizer: train with those.
    template = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    learner.normalizer = template.normalizer
    learner.pre_tokenizer = template.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        special_tokens=[],
        show_progress=False,
    )
    learner.train_from_iterator(list(corpus), trainer=trainer)
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        for m in json.loads(learner.to_str())["model"]["merges"]
    ]

    base = sorted(alphabet, key=lambda ch: ord(ch))
    tokens = base + [ch + "</w>" for ch in base] + ["".join(pair) for pair in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
    )
