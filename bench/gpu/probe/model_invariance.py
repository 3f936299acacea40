"""Pack invariance of the real base model on the GPU: MiniLM (bf16, transformers' BertModel) over one
TREC batch of 32 questions repeated K times, as a one-seed pack feeds it. Compares the first copy's
outputs and input gradients for K = 36 against smaller K, per attention implementation, and for
each layer's output (forward hooks), to find the first place a small pack computes other bits."""
import csv
import sys
import torch
from transformers import AutoTokenizer, BertModel

dev, bf = "cuda", torch.bfloat16
path = ".gpu/minilm-f16"
tok = AutoTokenizer.from_pretrained(path)
rows = [r for r in csv.DictReader(open("data/trec/train.csv"))][:32]
enc = tok([r["text"] for r in rows], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
for impl in ("sdpa", "eager"):
    model = BertModel.from_pretrained(path, attn_implementation=impl, torch_dtype=bf).to(dev)
    model.train() if "--dropout" in sys.argv else model.eval()
    w = torch.randn(384, device=dev, dtype=bf)

    def run(K):
        ids = enc["input_ids"].repeat(K, 1).to(dev)
        mask = enc["attention_mask"].repeat(K, 1).to(dev)
        emb = model.embeddings.word_embeddings(ids).detach().requires_grad_(True)
        outs = []
        hooks = [l.register_forward_hook(lambda m, i, o: outs.append(o[0].detach() if isinstance(o, tuple) else o.detach()))
                 for l in model.encoder.layer]
        h = model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        for hk in hooks:
            hk.remove()
        (h[:, 0].float() @ w.float()).sum().backward()
        return [o[:32] for o in outs], emb.grad[:32]

    full_outs, full_g = run(36)
    for K in (15, 8, 6, 5, 4, 2, 1):
        outs, g = run(K)
        layer_diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(full_outs, outs)]
        gd = (full_g.float() - g.float()).abs().max().item()
        print(f"{impl:5s} K={K:2d} layer outputs max|Δ| {['%.1e' % d for d in layer_diffs]}  input grad {gd:.1e}")
