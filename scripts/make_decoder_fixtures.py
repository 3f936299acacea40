"""Builds tiny random GPT-2 and Llama checkpoints for the Rust tests, with transformers' outputs.

Writes crates/etagrid-train/tests/fixtures/{tiny-gpt2, tiny-llama-gqa, tiny-llama-mha}/ with
config.json, model.safetensors, tokenizer.json (byte-level BPE trained on the BERT fixture's
corpus; id 0 is a pad token that never occurs in text) and reference.json: the
sequence-classification logits of the fixture's single-text inputs, each alone and as one
right-padded batch (which must agree), and for tied-embedding models the causal LM's
next-token logits. Llama variants: grouped-query attention (4 heads / 2 kv),
untied embeddings, `llama3` rope scaling; and multi-head attention, tied embeddings, no scaling.

    .venv/bin/python scripts/make_decoder_fixtures.py
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (GPT2Config, GPT2ForSequenceClassification, LlamaConfig,  # noqa: E402
                          LlamaForSequenceClassification)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CORPUS, INPUTS, NUM_LABELS, max_abs, tolist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "crates", "etagrid-train", "tests", "fixtures")
TEXTS = [i["text"] for i in INPUTS]


def tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.token_to_id("<|pad|>") == 0
    return tok


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def causal_lm_logits(out, ids, config):
    """Next-token logits after each text's last token from the causal-LM model of the same
    checkpoint, when its LM head is the (tied) input embedding; None when untied (the
    sequence-classification checkpoint has no lm_head to load)."""
    if not getattr(config, "tie_word_embeddings", True):
        return None
    lm = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        return [tolist(lm(input_ids=torch.tensor([i])).logits[0, -1]) for i in ids]


def build(name, cls, config, tok, seed):
    out = os.path.join(FIXTURES, name)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config)
    perturb(model, seed + 100)
    model.save_pretrained(out)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)
    model = cls.from_pretrained(out, attn_implementation="eager").eval()
    ids = [tok.encode(t).ids for t in TEXTS]
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([i])).logits[0] for i in ids])
        n = max(len(i) for i in ids)
        batch = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        padded = model(input_ids=batch, attention_mask=mask).logits
    d = max_abs(alone, padded)
    print("%s: max |alone - padded batch| = %.3e" % (name, d))
    assert d < 1e-5
    ref = {"texts": TEXTS, "input_ids": ids, "logits": tolist(alone),
           "next_token_logits": causal_lm_logits(out, ids, config),
           "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))
    print("  %d bytes in %s" % (total, out))


def main():
    torch.set_num_threads(1)
    tok = tokenizer()
    v = tok.get_vocab_size()
    common = dict(num_labels=NUM_LABELS, pad_token_id=0, initializer_range=0.1)
    build("tiny-gpt2", GPT2ForSequenceClassification,
          GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4, **common), tok, 1)
    build("tiny-llama-gqa", LlamaForSequenceClassification,
          LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                      **common), tok, 2)
    build("tiny-llama-mha", LlamaForSequenceClassification,
          LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, **common), tok, 3)


if __name__ == "__main__":
    main()
