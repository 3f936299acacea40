"""transformers' reference numbers for etagrid's causal-LM training and multiple-choice scoring.

Writes crates/etagrid-train/tests/fixtures/tiny-llama-mha/lm_reference.json from the
tiny tied-embedding Llama of scripts/make_decoder_fixtures.py and the committed fixture files
tests/fixtures/data/{lm.jsonl, mc.jsonl}:
- `lm`: each prompt/response pair tokenized as etagrid documents it (the template-rendered
  prompt with the tokenizer's special tokens, the response without, then EOS), the index of the
  first response token, and transformers' causal-LM loss of the right-padded batch with
  labels = input_ids and -100 on prompt and padding (`model(..., labels=labels).loss`), plus
  each example's loss alone;
- `mc`: each question's MMLU-style prompt ("question\\nA. …\\nB. …\\nAnswer:"), its ids, the
  next-token logits of the choice-letter tokens (" A" when one token, else "A"), the argmax
  over the question's own letters and the accuracy.

With --smollm2 DIR it instead writes crates/etagrid-train/tests/fixtures/smollm2_reference.json: the converted
SmolLM2-135M-Instruct's next-token logits (top 20 and every 97th vocabulary id) for a few
prompts, which tests/smollm2.rs compares with etagrid's.

    .venv/bin/python scripts/make_lm_fixtures.py [--smollm2 models/SmolLM2-135M-Instruct]
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "crates", "etagrid-train", "tests", "fixtures")
TEMPLATE = "Q: {prompt}\nA:"
LETTERS = "ABCDEFGHIJ"
SMOLLM2_PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, there was a little",
]


def read_jsonl(name):
    with open(os.path.join(FIXTURES, "data", name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_lm(tok, prompt, response, eos, max_len):
    ids = tok.encode(TEMPLATE.replace("{prompt}", prompt), add_special_tokens=True).ids[:max_len]
    start = len(ids)
    ids = ids + tok.encode(response, add_special_tokens=False).ids + [eos]
    return ids[:max_len], start


def mc_prompt(q):
    lines = [q["question"].rstrip()] + [f"{l}. {c}" for l, c in zip(LETTERS, q["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mc_answer(q):
    a = q["answer"]
    return a if isinstance(a, int) else LETTERS.index(a.upper())


def letter_id(tok, c):
    for text in (" " + c, c):
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) == 1:
            return ids[0]
    raise SystemExit(f"no single token for {c}")


def fixture(name, max_len=48):
    d = os.path.join(FIXTURES, name)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    lm = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    eos, pad = lm.config.eos_token_id, lm.config.pad_token_id or 0
    pairs = read_jsonl("lm.jsonl")
    enc = [encode_lm(tok, p["prompt"], p["response"], eos, max_len) for p in pairs]
    t = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), t), pad)
    mask = torch.zeros((len(enc), t), dtype=torch.long)
    labels = torch.full((len(enc), t), -100)
    for r, (i, s) in enumerate(enc):
        ids[r, : len(i)] = torch.tensor(i)
        mask[r, : len(i)] = 1
        labels[r, s: len(i)] = torch.tensor(i[s:])
    with torch.no_grad():
        batch_loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        each = [lm(input_ids=torch.tensor([i]), labels=torch.tensor([[-100] * s + i[s:]])).loss.item()
                for i, s in enc]
    qs = read_jsonl("mc.jsonl")
    most = max(len(q["choices"]) for q in qs)
    letters = [letter_id(tok, c) for c in LETTERS[:most]]
    mc = []
    correct = 0
    for q in qs:
        qids = tok.encode(mc_prompt(q), add_special_tokens=True).ids
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([qids])).logits[0, -1]
        ll = logits[letters].tolist()
        n = len(q["choices"])
        pred = max(range(n), key=lambda k: ll[k])
        correct += pred == mc_answer(q)
        mc.append({"prompt": mc_prompt(q), "input_ids": qids, "letter_logits": ll,
                   "prediction": pred, "answer": mc_answer(q)})
    out = {
        "note": "made by scripts/make_lm_fixtures.py with transformers " + __import__("transformers").__version__,
        "template": TEMPLATE, "max_len": max_len, "eos": eos,
        "lm": {"input_ids": [i for i, _ in enc], "loss_from": [s for _, s in enc],
               "batch_loss": batch_loss, "example_losses": each},
        "mc": {"letter_ids": letters, "questions": mc, "accuracy": correct / len(qs)},
    }
    with open(os.path.join(d, "lm_reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(name, "batch loss", batch_loss, "mc accuracy", correct / len(qs))


def smollm2(model_dir):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab = lm.config.vocab_size
    sample = list(range(0, vocab, 97))
    rows = []
    for p in SMOLLM2_PROMPTS:
        ids = tok.encode(p, add_special_tokens=True).ids
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
        top = logits.topk(20)
        rows.append({"prompt": p, "input_ids": ids,
                     "top_ids": top.indices.tolist(), "top_logits": top.values.tolist(),
                     "sample_logits": logits[sample].tolist()})
        print(repr(p), [(tok.id_to_token(i), round(v, 3)) for i, v in
                        zip(top.indices.tolist()[:3], top.values.tolist()[:3])])
    out = {"note": "made by scripts/make_lm_fixtures.py --smollm2 with transformers "
                   + __import__("transformers").__version__ + " from the converted model",
           "sample_ids": sample, "prompts": rows}
    path = os.path.join(FIXTURES, "smollm2_reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
        f.write("\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="the converted model directory")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.smollm2:
        smollm2(a.smollm2)
    else:
        for name in ("tiny-llama-mha",):
            fixture(name)
