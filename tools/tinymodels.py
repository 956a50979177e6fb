"""Small models of a real architecture, built locally (nothing from a hub): a Qwen2 causal LM with a byte-level
BPE tokenizer trained by `tokenizers` on the skills' own text, and a ChatML chat template.

The demo world's Llama uses a character tokenizer and raw prompts; this builder exercises the other path a real
user takes (BPE, chat template, EOS = `<|im_end|>`, Qwen2 modules) in tests, and builds the ~100M-parameter
models used for GPU throughput measurements.
"""

from collections.abc import Iterable
from pathlib import Path

from continual_opd.modelio import save_model_atomic

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer (Qwen2-style specials, ChatML template), trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")
    fast.chat_template = CHATML
    return fast


def build_qwen2(folder: str | Path, texts: Iterable[str], vocab_size: int = 512, hidden: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int = 128, max_positions: int = 256,
                seed: int = 0) -> Path:
    """Build a randomly initialised Qwen2ForCausalLM and its tokenizer into `folder` (written atomically)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return save_model_atomic(model, tokenizer, folder)


def skill_texts(skills: Iterable) -> list[str]:
    """Every prompt and answer of these skills, both splits, as tokenizer training text."""
    out = []
    for s in skills:
        for split in ("train", "heldout"):
            for it in s.items(split, 100_000):
                out += [it.prompt, it.answer]
    return out
