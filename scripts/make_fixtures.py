#!/usr/bin/env python3
"""Build the tiny-BERT test fixtures for crates/etagrid-train.

Run with the project venv (torch, transformers, tokenizers, peft):
    .venv/bin/python scripts/make_fixtures.py

Writes crates/etagrid-train/tests/fixtures/tiny-bert/:
    config.json, model.safetensors   random tiny BertForSequenceClassification (3 labels)
    tokenizer.json                   hand-built WordPiece tokenizer (no padding/truncation)
    reference.json                   transformers outputs for a few inputs
    lora_reference.json              PEFT LoRA logits + 3 LoRA+ AdamW steps
    README.md

Everything is CPU fp32 and deterministic; nothing is downloaded.
"""

import argparse
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "crates", "etagrid-train", "tests", "fixtures", "tiny-bert")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
MAX_LENGTH = 32
NUM_LABELS = 3

# Corpus the vocabulary is built from. It contains every reference input
# except the out-of-vocabulary word "unwatchably" and the symbol "☃".
CORPUS = [
    "good",
    "The movie was great fun.",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "A quiet, slow story - but an honest one!",
    "the film was dull and far too long, yet the actors kept trying to save it with "
    "warm, funny and surprisingly moving scenes.",
    "I would not watch it again.",
    "This is the best film of the year.",
    "The plot is thin but the music is lovely.",
    "She gave a brilliant performance as the young doctor.",
    "Nothing in this picture makes any sense.",
    "How many people live in Tokyo?",
    "Who wrote the first novel about the sea?",
    "When did the war end?",
    "Where is the longest river in the world?",
    "Why do cats sleep so much?",
    "The director has a clear vision and a sharp eye.",
    "It is a bad, boring and empty comedy.",
    "We laughed, we cried, and we left happy.",
    "The story never finds its heart.",
    "An old man and his dog walk home in the rain.",
    "Every scene looks beautiful, but the characters feel cold.",
    "The script is clever and the jokes work.",
    "You can skip this one.",
    "A small film with a big voice.",
    "The ending was sad and strange.",
    "They play music at night in the city.",
    "He is not a good actor, but he is a good man.",
    "Children will love the bright colors and silly songs.",
    "The second half drags.",
    "Which country has the most islands?",
    "What does the word mean?",
    "Fans of the book will be glad.",
    "It feels like a long, tired dream.",
    "One of the worst movies I have ever seen.",
    "A gentle, human and very funny film.",
]
# Extra word pieces so that the OOV word "unwatchably" splits into
# "un ##watch ##ably" and some common suffixes exist.
EXTRA_PIECES = ["un", "##watch", "##ably", "##s", "##ing", "##ed", "##ly", "##er", "##est"]

# Reference inputs: a single word, a normal sentence, a pair, one with an
# OOV word (subwords) and an unknown symbol ([UNK]), a mixed-case one with
# punctuation, and a longer one.
INPUTS = [
    {"text": "good"},
    {"text": "The movie was great fun."},
    {"text": "What is the capital of France?", "text_pair": "Paris is the capital of France."},
    {"text": "the film was unwatchably dull ☃"},
    {"text": "A Quiet, Slow Story - but an HONEST one!"},
    {"text": "the film was dull and far too long, yet the actors kept trying to save it with "
             "warm, funny and surprisingly moving scenes."},
]
LABELS = [0, 1, 2, 0, 1, 2][: len(INPUTS)]


def build_tokenizer():
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words, chars = set(), set()
    for s in CORPUS:
        for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(s)):
            words.add(w)
            chars.update(w)
    vocab_list = list(SPECIALS)
    vocab_list += sorted(chars)
    vocab_list += ["##" + c for c in sorted(chars)]
    for w in sorted(words) + EXTRA_PIECES:
        if w not in vocab_list:
            vocab_list.append(w)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    assert "unwatchably" not in vocab and "☃" not in vocab

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # register [PAD] [UNK] [CLS] [SEP] [MASK] as special (added) tokens, like a
    # real BERT tokenizer.json; they are already in the vocab so ids stay 0..4
    tok.add_special_tokens(SPECIALS)
    tok.no_padding()
    tok.no_truncation()
    for i, t in enumerate(SPECIALS):
        assert vocab[t] == i
    return tok, vocab


def encode_all(tok):
    encs = []
    for inp in INPUTS:
        if "text_pair" in inp:
            e = tok.encode(inp["text"], inp["text_pair"])
        else:
            e = tok.encode(inp["text"])
        assert len(e.ids) <= MAX_LENGTH, (inp, len(e.ids))
        encs.append({"input_ids": list(e.ids), "token_type_ids": list(e.type_ids),
                     "tokens": list(e.tokens)})
    return encs


def padded_batch(encs):
    n = max(len(e["input_ids"]) for e in encs)
    ids, tt, am = [], [], []
    for e in encs:
        k = len(e["input_ids"])
        ids.append(e["input_ids"] + [0] * (n - k))
        tt.append(e["token_type_ids"] + [0] * (n - k))
        am.append([1] * k + [0] * (n - k))
    return {"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(tt),
            "attention_mask": torch.tensor(am)}


def single(e):
    return {"input_ids": torch.tensor([e["input_ids"]]),
            "token_type_ids": torch.tensor([e["token_type_ids"]]),
            "attention_mask": torch.ones(1, len(e["input_ids"]), dtype=torch.long)}


def tolist(t):
    return t.detach().to(torch.float32).cpu().tolist()


def max_abs(a, b):
    return (a - b).abs().max().item()


def build_model(vocab_size):
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=NUM_LABELS,
        hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        # default 0.02 gives nearly input-independent outputs in such a tiny
        # model; 0.1 makes differences between inputs (and bugs) visible.
        initializer_range=0.1,
        id2label={i: "LABEL_%d" % i for i in range(NUM_LABELS)},
        label2id={"LABEL_%d" % i: i for i in range(NUM_LABELS)},
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    # Perturb LayerNorm weights/biases and all biases (init makes them 1 / 0),
    # so that a wrongly loaded LayerNorm or bias is detected.
    g = torch.Generator().manual_seed(123)
    n_perturbed = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
                n_perturbed += 1
    model.eval()
    return model, n_perturbed


def run_reference(model, encs):
    """Each input alone (no padding) and as one padded batch; must agree."""
    logits, pooled, cls = [], [], []
    with torch.no_grad():
        for e in encs:
            out = model.bert(**single(e))
            lg = model.classifier(out.pooler_output)
            full = model(**single(e)).logits
            assert max_abs(lg, full) == 0.0
            logits.append(lg[0])
            pooled.append(out.pooler_output[0])
            cls.append(out.last_hidden_state[0, 0])
        b = padded_batch(encs)
        bout = model.bert(**b)
        blogits = model(**b).logits
    logits, pooled, cls = torch.stack(logits), torch.stack(pooled), torch.stack(cls)
    d = max(max_abs(logits, blogits), max_abs(pooled, bout.pooler_output),
            max_abs(cls, bout.last_hidden_state[:, 0]))
    print("base model: max |alone - padded batch| = %.3e (logits, pooled, cls)" % d)
    assert d < 1e-5, d
    return logits, pooled, cls


def lora_fixture(out_dir, encs):
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    base = BertForSequenceClassification.from_pretrained(out_dir, attn_implementation="eager")
    base.eval()
    r, alpha = 4, 8
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0,
                     task_type="SEQ_CLS")
    model = get_peft_model(base, cfg)
    model.eval()

    ga = torch.Generator().manual_seed(1)
    gb = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.rand(p.shape, generator=ga) * 0.2 - 0.1)
            elif "lora_B" in name:
                p.copy_(torch.rand(p.shape, generator=gb) * 0.2 - 0.1)
    adapter = {n: tolist(p) for n, p in model.named_parameters() if "lora_" in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    scalings = sorted({m.scaling["default"] for m in model.modules()
                       if isinstance(getattr(m, "scaling", None), dict)})

    batch = padded_batch(encs)
    with torch.no_grad():
        logits = model(**batch).logits
        alone = torch.cat([model(**single(e)).logits for e in encs])
    d = max_abs(logits, alone)
    print("lora model: max |alone - padded batch| logits = %.3e" % d)
    assert d < 1e-5, d

    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                    loraplus_weight_decay=0.01)
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = []
    print("create_loraplus_optimizer param groups:")
    for i, g in enumerate(opt.param_groups):
        names = sorted(name_of[id(p)] for p in g["params"])
        groups.append({"lr": g["lr"], "weight_decay": g["weight_decay"], "params": names})
        print("  group %d: lr=%g weight_decay=%g n=%d %s" % (i, g["lr"], g["weight_decay"],
                                                             len(names), names))
    d0 = opt.param_groups[0]
    adamw = {"betas": list(d0["betas"]), "eps": d0["eps"], "amsgrad": d0["amsgrad"],
             "maximize": d0["maximize"]}

    labels = torch.tensor(LABELS)
    losses, grads0 = [], None
    for step in range(3):
        opt.zero_grad()
        out = model(**batch)
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        loss.backward()
        if step == 0:
            grads0 = {n: tolist(p.grad) for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        losses.append(loss.item())
        print("  step %d loss %.8f" % (step, loss.item()))
    with torch.no_grad():
        logits_after = model(**batch).logits
        final_loss = torch.nn.functional.cross_entropy(logits_after, labels).item()
    after = {n: tolist(p) for n, p in model.named_parameters() if p.requires_grad}

    return {
        "description": "PEFT LoRA on tests/fixtures/tiny-bert (BertForSequenceClassification), "
                       "CPU fp32, eval mode (no dropout). Generated by scripts/make_fixtures.py.",
        "r": r,
        "lora_alpha": alpha,
        "scaling": scalings[0] if len(scalings) == 1 else scalings,
        "target_modules": ["query", "value"],
        "lora_dropout": 0.0,
        "task_type": "SEQ_CLS",
        "adapter": adapter,
        "trainable_params": trainable,
        "batch": {k: v.tolist() for k, v in batch.items()},
        "logits": tolist(logits),
        "train": {
            "optimizer": "peft.optimizers.create_loraplus_optimizer(model, torch.optim.AdamW, "
                         "lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.01)",
            "lr": 1e-3,
            "loraplus_lr_ratio": 16,
            "loraplus_weight_decay": 0.01,
            "adamw": adamw,
            "labels": LABELS,
            "loss": "cross_entropy mean over the batch",
            "steps": 3,
            "param_groups": groups,
            "losses": losses,
            "grads_step0": grads0,
            "params_after": after,
            "logits_after": tolist(logits_after),
            "loss_after": final_loss,
        },
        "transformers_version": transformers.__version__,
        "peft_version": __import__("peft").__version__,
        "torch_version": torch.__version__,
    }


README = """\
# tiny-bert test fixture

A tiny, randomly initialised `BertForSequenceClassification` (hidden 32, 2 layers,
4 heads, intermediate 64, 3 labels, vocab {vocab_size}) in Hugging Face format, with a
hand-built WordPiece `tokenizer.json`, and reference outputs computed with
transformers {tf} / torch {torch} (CPU, fp32, eager attention, eval mode).
LayerNorm weights/biases and all biases are perturbed away from their 1/0 init.

- `reference.json`: per input `input_ids` / `token_type_ids` / `tokens` (unpadded),
  `logits`, `pooled` (pooler output, which the classifier reads) and
  `last_hidden_state_cls`. Each input was run alone; a padded batch with an
  attention mask agrees to < 1e-5.
- `lora_reference.json`: PEFT LoRA (r=4, alpha=8, query+value, SEQ_CLS) with fixed
  nonzero `lora_A`/`lora_B`, its logits, and 3 steps of AdamW via
  `peft.optimizers.create_loraplus_optimizer` (lr 1e-3, ratio 16, wd 0.01): param
  groups, losses, step-0 gradients, trainable parameters afterwards.

Regenerate (deterministic; needs torch, transformers, tokenizers, peft; no network):

    .venv/bin/python scripts/make_fixtures.py
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()

    tok, vocab = build_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))
    # reload to make sure the saved file is what we use
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert tok.padding is None and tok.truncation is None
    encs = encode_all(tok)
    for inp, e in zip(INPUTS, encs):
        print("%2d tokens: %s" % (len(e["tokens"]), " ".join(e["tokens"])))
    print("vocab size %d" % len(vocab))

    model, n_pert = build_model(len(vocab))
    print("perturbed %d LayerNorm/bias tensors" % n_pert)
    model.save_pretrained(out)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)  # transformers writes 0600

    # The reference is computed from the checkpoint as loaded back from disk.
    reloaded = BertForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    sd0, sd1 = model.state_dict(), reloaded.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    logits, pooled, cls = run_reference(reloaded, encs)
    with torch.no_grad():
        ol = torch.stack([model(**single(e)).logits[0] for e in encs])
    print("in-memory vs reloaded model: max |diff| logits = %.3e" % max_abs(ol, logits))
    assert max_abs(ol, logits) < 1e-6

    ref = {
        "inputs": INPUTS,
        "max_length": MAX_LENGTH,
        "input_ids": [e["input_ids"] for e in encs],
        "token_type_ids": [e["token_type_ids"] for e in encs],
        "tokens": [e["tokens"] for e in encs],
        "logits": tolist(logits),
        "pooled": tolist(pooled),
        "last_hidden_state_cls": tolist(cls),
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")

    lora = lora_fixture(out, encs)
    with open(os.path.join(out, "lora_reference.json"), "w") as f:
        json.dump(lora, f, indent=None, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")

    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(README.format(vocab_size=len(vocab), tf=transformers.__version__,
                              torch=torch.__version__))

    total = 0
    for name in sorted(os.listdir(out)):
        sz = os.path.getsize(os.path.join(out, name))
        total += sz
        print("%-22s %8d bytes" % (name, sz))
    print("total %d bytes" % total)
    assert total < 300_000, total


if __name__ == "__main__":
    sys.exit(main())
