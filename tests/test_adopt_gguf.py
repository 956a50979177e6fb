"""`continual-opd adopt FILE.gguf`: a GGUF file becomes the first champion as a plain fp32 Hugging Face folder.

The fast tests write tiny GGUF files with `gguf.GGUFWriter` (a 1-layer Llama and a byte-level BPE tokenizer) for
the conversion and for each error path: a bad file is refused with a `GGUFError` that names it, the registry and
the home are left as they were. The slow test adopts the real SmolLM2-135M-Instruct GGUF (`make install-real`).
"""

import importlib.metadata
from pathlib import Path

import pytest

from continual_opd import gguf_import, registry
from continual_opd.adopt import adopt_model
from continual_opd.gguf_import import GGUFError

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed: run `make install-real`")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_gguf(path: Path, architecture: str = "llama", tokenizer: bool = True, embedding_dtype=None) -> Path:
    """A valid GGUF file of a random 1-layer Llama (hidden 16) with a 260-token byte-level BPE tokenizer."""
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, heads, kv_heads, ffn = 16, 2, 1, 32
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "Ġt"]
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
        writer.add_token_merges(["Ġ t"])
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(0)
        writer.add_chat_template(CHATML)
    rng = np.random.default_rng(0)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "blk.0.attn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv, hidden),
              "blk.0.attn_v.weight": (kv, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_norm.weight": (hidden,), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
              "output_norm.weight": (hidden,)}
    for name, shape in shapes.items():
        dtype = embedding_dtype if name == "token_embd.weight" and embedding_dtype is not None else np.float32
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every path under the home with its size: an error must leave no file, folder or temp folder behind."""
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def registered_models() -> list[str]:
    return [m.name for m in registry.client().search_registered_models()]


@pytest.fixture()
def refused(fresh_world):
    """Adopt a bad file; return the GGUFError after checking that nothing was registered or written."""
    def adopt(path: Path) -> str:
        before = snapshot(fresh_world.root)
        with pytest.raises(GGUFError) as error:
            adopt_model(path, "gguf-student", fresh_world)
        message = str(error.value)
        assert str(path.resolve()) in message and "\n" not in message
        assert registered_models() == []
        assert snapshot(fresh_world.root) == before
        return message
    return adopt


def test_a_truncated_gguf_is_refused(tmp_path, refused):
    whole = tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    for cut in (len(whole) - 100, len(whole) // 2, 100):
        path = tmp_path / f"cut-{cut}.gguf"
        path.write_bytes(whole[:cut])
        message = refused(path)
        assert "is truncated" in message and "again" in message, message


def test_a_file_that_is_not_gguf_is_refused(tmp_path, refused):
    path = tmp_path / "model.gguf"
    path.write_text('{"model_type": "llama"}\n')
    message = refused(path)
    assert "is not a GGUF file" in message and "Hugging Face model folder" in message


def test_a_missing_gguf_file_is_named(tmp_path, refused):
    assert "does not exist" in refused(tmp_path / "absent.gguf")


def test_a_gguf_without_a_tokenizer_is_refused(tmp_path, refused):
    message = refused(tiny_gguf(tmp_path / "no-tokenizer.gguf", tokenizer=False))
    assert "has no tokenizer" in message and "adopt the original Hugging Face folder" in message


def test_an_architecture_transformers_cannot_read_is_refused(tmp_path, refused):
    message = refused(tiny_gguf(tmp_path / "frob.gguf", architecture="frobnicator"))
    assert "cannot read GGUF file" in message and "'frobnicator'" in message and "not supported" in message


def test_a_tensor_type_gguf_cannot_dequantize_is_refused(tmp_path, refused):
    import numpy as np

    message = refused(tiny_gguf(tmp_path / "f64.gguf", embedding_dtype=np.float64))
    assert "F64" in message and "cannot dequantize" in message and "supported type" in message


def test_the_command_line_prints_one_error_line_and_exits_1(tmp_path, fresh_world, capsys):
    from cli.main import main

    path = tiny_gguf(tmp_path / "no-tokenizer.gguf", tokenizer=False)
    assert main(["adopt", str(path), "--name", "gguf-student"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: GGUF file ") and "has no tokenizer" in err[0], err
    assert registered_models() == []


def test_a_missing_real_model_package_says_which_make_target_installs_it(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(GGUFError, match="make install-real"):
        gguf_import.smollm2_gguf()


def test_a_tiny_gguf_becomes_a_plain_champion_converted_once(tmp_path, fresh_world, monkeypatch, torch_threads):
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_gguf(tmp_path / "tiny.gguf")
    ref = adopt_model(path, "gguf-student", fresh_world)

    assert registry.aliases("gguf-student")[registry.CHAMPION] == ref.version
    version = registry.get_version("gguf-student", ref.version)
    info = gguf_import.inspect_gguf(path)
    assert version.tags["source_file"] == str(path.resolve())
    assert version.tags["source_sha256"] == gguf_import.file_sha256(path) == info.sha256
    assert version.tags["gguf_quantization"] == "F32" and version.tags["gguf_tensor_types"] == "F32:11"
    assert version.tags["gguf_architecture"] == "llama" and version.tags["architecture"] == "LlamaForCausalLM"
    folder = Path(ref.folder)
    assert folder.parent == fresh_world.models and not list(fresh_world.models.glob(".*tmp*"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()}

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert getattr(plain.config, "quantization_config", None) is None
    original = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([[1, 74, 75, 259, 2]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, original(ids).logits)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the same file was converted twice")

    monkeypatch.setattr(gguf_import, "convert_gguf", no_second_conversion)
    again = adopt_model(path, "gguf-student", fresh_world)
    assert (again.version, again.folder) == (ref.version, ref.folder)
    assert len(registry.client().search_model_versions("name='gguf-student'")) == 1

    as_folder = adopt_model(folder, "folder-student", fresh_world)  # a folder is adopted as before
    tags = registry.get_version("folder-student", as_folder.version).tags
    assert tags["made_by"] == f"continual-opd adopt from {folder}" and "source_format" not in tags
    assert Path(as_folder.folder).name.startswith(f"adopted-{folder.name}-")


@pytest.mark.slow
@pytest.mark.long
def test_the_real_smollm2_gguf_is_adopted_and_answers(fresh_world, monkeypatch, torch_threads):
    import torch
    from transformers import AutoModelForCausalLM

    from continual_opd.decoding import greedy_complete
    from continual_opd.modelio import load_tokenizer

    try:
        path = gguf_import.smollm2_gguf()
    except GGUFError as exc:
        pytest.skip(str(exc))
    ref = adopt_model(path, "smol-student", fresh_world)

    assert registry.aliases("smol-student")[registry.CHAMPION] == ref.version
    tags = registry.get_version("smol-student", ref.version).tags
    assert tags["source_file"] == str(path) and tags["source_sha256"] == gguf_import.SMOLLM2_SHA256
    assert tags["gguf_quantization"] == "Q4_1" and "Q4_1:" in tags["gguf_tensor_types"]
    assert tags["gguf_architecture"] == "llama" and tags["architecture"] == "LlamaForCausalLM"
    assert tags["method"] == "adopted" and tags["source_format"] == "gguf"

    model = AutoModelForCausalLM.from_pretrained(ref.folder, dtype=torch.float32)
    tokenizer = load_tokenizer(ref.folder)
    assert tokenizer.chat_template
    answer = greedy_complete(model, tokenizer, ["What is the capital of France?"], max_new_tokens=16)[0]
    assert "Paris" in answer, answer

    monkeypatch.setattr(gguf_import, "convert_gguf", lambda *a, **k: pytest.fail("converted the same file twice"))
    assert adopt_model(path, "smol-student", fresh_world).version == ref.version
