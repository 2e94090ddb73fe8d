"""A tiny random-weight Llama checkpoint written at run time, so a GPU check needs no download.

A byte-level BPE tokenizer is trained on a few sentences (tokenizers, offline), wrapped as a
PreTrainedTokenizerFast with a ChatML template, and saved beside a randomly initialised
LlamaForCausalLM (`save_pretrained`: safetensors + config). The end-of-text row of the output
head is zeroed: its logit is 0 while the greedy argmax over hundreds of random logits is
positive, so greedy streams never stop early and token counts are exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EOS = "<|im_end|>"
SPECIALS = ["<|endoftext|>", "<|im_start|>", EOS]
CORPUS = [
    "The capital of France is Paris. Count from one to ten: one two three four five.",
    "A worker holds models in memory and streams tokens to the router over gRPC.",
    "Six seven eight nine ten. The quick brown fox jumps over the lazy dog.",
    "Continuous batching decodes many sequences at once on a GPU or a CPU.",
]


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, bos_token=SPECIALS[0], pad_token=SPECIALS[0]
    )
    tok.chat_template = CHATML
    return tok


def write_tiny_llama(
    out: Path, *, hidden: int = 256, layers: int = 4, vocab_size: int = 512, seed: int = 0
) -> tuple[Path, int]:
    """Write the checkpoint into `out` (created); returns `out`. Blocking, ~1 s on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = _tokenizer(vocab_size)
    eos = int(tok.convert_tokens_to_ids(EOS))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=int(tok.bos_token_id),
        eos_token_id=eos,
        pad_token_id=int(tok.pad_token_id),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()  # never the greedy pick: streams run to max_tokens
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, sum(int(p.numel()) for p in model.parameters())
