"""A character tokenizer for the demo world, saved as an ordinary Hugging Face tokenizer folder.

Every character of every demo skill is one token, so the tiny models see arithmetic digit by digit.
It is a `PreTrainedTokenizerFast`, so TRL, `AutoTokenizer` and the data contract use it like any
real tokenizer (left padding for generation, BOS added by a post-processor).
"""

import string

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + "+-*=:!"


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=64,
    )
