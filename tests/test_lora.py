"""Parameter-efficient updates: a LoRA candidate is merged before saving, so it is a plain Hugging Face folder."""

from tasks.distill_config import DistillConfig


def test_a_merged_lora_student_reloads_as_a_plain_folder_with_identical_logits(tmp_path):
    import torch
    from peft import get_peft_model

    from continual_opd.modelio import load_model, save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.distill_training import lora_config, merged

    assert lora_config(DistillConfig()) is None, "lora_rank 0 (the default) is full fine-tuning"
    torch.set_num_threads(1)
    tok = build_tokenizer()
    base = build_tiny_model(tok, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = lora_config(DistillConfig(lora_rank=4))
    assert (lora.r, lora.lora_alpha) == (4, 8), "alpha is always 2 x rank"
    peft_model = get_peft_model(base, lora)
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_B" in n]
    assert adapted and any("mlp" in n for n in adapted) and any("self_attn" in n for n in adapted)
    assert not any("lm_head" in n for n in adapted), "the output head stays as it is"
    with torch.no_grad():  # a trained adapter: lora_B starts at zero, which would make the test vacuous
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    ids = tok(["12+34=", "rev:abc=", "up:hello="], return_tensors="pt", padding=True)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**ids).logits

    plain = merged(peft_model)
    folder = save_model_atomic(plain, tok, tmp_path / "candidate")
    assert not (folder / "adapter_config.json").exists() and (folder / "config.json").is_file()
    reloaded, _ = load_model(folder, device="cpu")
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert set(reloaded.state_dict()) == set(before), "the same parameter names as the champion: no adapter left"
    assert any(not torch.equal(reloaded.state_dict()[k], before[k]) for k in before), "the update is in the weights"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, expected, rtol=1e-4, atol=1e-4)
