"""How a prompt reaches a model: as raw text, or as a user message through the tokenizer's chat template.

A chat model (its tokenizer has a chat template) sees every prompt as a one-message conversation; a base
model such as the demo world's sees the raw text, with the tokenizer adding its BOS token. Every stage
renders prompts through this module (generation and evaluation as text, TRL trainers as TRL's
"conversational" or "standard" dataset format), so a prompt looks the same to the teacher, the student,
the gate and the benchmark.
"""

from collections.abc import Sequence


def is_chat(tokenizer) -> bool:
    """True when the tokenizer has a chat template, so prompts go through it."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_text(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model reads them: through the chat template (with the assistant turn opened), or raw."""
    if is_chat(tokenizer):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    return list(prompts)


def add_special_tokens(tokenizer) -> bool:
    """Whether tokenizing `as_text` output should add special tokens: raw prompts need BOS, templates add their own."""
    return not is_chat(tokenizer)


def as_trl_prompt(tokenizer, text: str):
    """One prompt in the form TRL's trainers take: a conversation for chat models, else the text itself."""
    return [{"role": "user", "content": text}] if is_chat(tokenizer) else text


def as_trl_completion(tokenizer, text: str):
    """One completion in the form TRL's SFT trainer takes, matching `as_trl_prompt`."""
    return [{"role": "assistant", "content": text}] if is_chat(tokenizer) else text
