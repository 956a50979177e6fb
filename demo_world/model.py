"""The demo world's tiny causal LM: a `LlamaForCausalLM` built from a config, 0.86M parameters.

Small enough to pretrain, RL-train and distil on a laptop CPU in minutes, yet an ordinary Hugging
Face model: saved with safetensors, loaded with `AutoModelForCausalLM.from_pretrained`.
"""


def tiny_llama_config(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, ffn: int = 384,
                      positions: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(tokenizer, seed: int = 0, **shape):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, **shape))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
