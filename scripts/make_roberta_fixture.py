"""Builds the tiny random RoBERTa fixture for the Rust tests, with transformers' outputs.

Writes crates/etagrid-train/tests/fixtures/tiny-roberta/{config.json, model.safetensors,
tokenizer.json, reference.json}: a byte-level BPE tokenizer trained on the BERT fixture's corpus,
a 2-layer RobertaForSequenceClassification (hidden 32, pad id 1, so positions start at 2) with
perturbed LayerNorms and biases, and the logits of the fixture's inputs, each alone and as one
padded batch (which must agree).

Also writes tests/fixtures/tiny-roberta-tt, the same with `type_vocab_size = 2` and a tokenizer whose
pair template gives the second segment token type 1 (`<s> A </s> </s> B </s>`, types 0…0 1…1), with
more pair inputs: transformers' RoBERTa then adds a non-trivial token-type embedding (checked by
the script: the logits differ from those with all-zero types). Run with the venv's python
(torch + transformers):

    .venv/bin/python scripts/make_roberta_fixture.py
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import RobertaConfig, RobertaForSequenceClassification  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CORPUS, INPUTS, NUM_LABELS, max_abs, tolist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "crates", "etagrid-train", "tests", "fixtures")
OUT = os.path.join(FIXTURES, "tiny-roberta")
OUT_TT = os.path.join(FIXTURES, "tiny-roberta-tt")
INPUTS_TT = INPUTS + [
    {"text": "the film was dull", "text_pair": "was it?"},
    {"text": "good", "text_pair": "The movie was great fun."},
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base


def build_tokenizer(token_types=False):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if token_types:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s>:1 $B:1 </s>:1",
            special_tokens=[("<s>", 0), ("</s>", 2)])
    else:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                          trim_offsets=True, add_prefix_space=False)
    tok.no_padding()
    tok.no_truncation()
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i, t
    return tok


def build(out, inputs, type_vocab_size):
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    tok = build_tokenizer(token_types=type_vocab_size > 1)
    tok.save(os.path.join(out, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    encs, types = [], []
    for inp in inputs:
        e = tok.encode(inp["text"], inp["text_pair"]) if "text_pair" in inp else tok.encode(inp["text"])
        encs.append(list(e.ids))
        types.append(list(e.type_ids))
        print("%2d tokens: %s" % (len(e.ids), " ".join(e.tokens)))

    config = RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=type_vocab_size, num_labels=NUM_LABELS,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=0.1,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    g = torch.Generator().manual_seed(321)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)
    model = RobertaForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()

    def tt(t):
        # Token types only where the model has them (type_vocab_size 1: transformers' default zeros).
        return {"token_type_ids": torch.tensor(t)} if type_vocab_size > 1 else {}

    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([ids]), **tt([ty])).logits[0]
                             for ids, ty in zip(encs, types)])
        n = max(len(ids) for ids in encs)
        batch = torch.tensor([ids + [1] * (n - len(ids)) for ids in encs])
        mask = torch.tensor([[1] * len(ids) + [0] * (n - len(ids)) for ids in encs])
        padded_types = [ty + [0] * (n - len(ty)) for ty in types]
        padded = model(input_ids=batch, attention_mask=mask, **tt(padded_types)).logits
        if type_vocab_size > 1:
            zeros = model(input_ids=batch, attention_mask=mask,
                          token_type_ids=torch.zeros_like(batch)).logits
            d0 = max_abs(zeros, padded)
            print("max |all-zero types - real types| = %.3e" % d0)
            assert d0 > 1e-3, "token types must matter in this fixture"
    d = max_abs(alone, padded)
    print("max |alone - padded batch| = %.3e" % d)
    assert d < 1e-5
    ref = {"inputs": inputs, "input_ids": encs, "token_type_ids": types, "logits": tolist(alone),
           "transformers_version": transformers.__version__,
           "tokenizers_version": tokenizers.__version__, "torch_version": torch.__version__}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))
    print("total %d bytes in %s" % (total, out))


def main():
    build(OUT, INPUTS, 1)
    build(OUT_TT, INPUTS_TT, 2)


if __name__ == "__main__":
    main()
