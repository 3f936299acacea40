"""Which GPU kernels give a row the same bits whatever the batch it is computed in? (pack
invariance: a cell's rows must not depend on how many cells share its pack). Prints, for each
op, the max |difference| between the first K cells' rows computed in a batch of 36 cells and
computed alone in a batch of K cells (MiniLM's shapes: 32 rows × 32 tokens a cell, hidden 384)."""
import sys
import torch

torch.manual_seed(0)
dev = "cuda"
bf = torch.bfloat16
b, T, H, heads, d, I = 32, 32, 384, 12, 32, 1536
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = sys.argv[1:] != ["strict"]
print("allow_bf16_reduced_precision_reduction =",
      torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)


def check(name, f, full_n, sub_n, make):
    x = make(full_n)
    with torch.no_grad():
        full = f(x)
        part = f(x[:sub_n].contiguous())
    diff = (full[:sub_n].float() - part.float()).abs().max().item()
    return diff


Ws = {(o, i): torch.randn(o, i, device=dev, dtype=bf) * 0.05 for (o, i) in [(H, H), (I, H), (H, I)]}
A = torch.randn(36, 8, H, device=dev)
rows = []
for K in (15, 8, 5, 3, 2, 1):
    n, s = 36 * b, K * b
    r = {}
    for (o, i), W in Ws.items():
        r[f"linear {i}->{o}"] = check("", lambda x: x @ W.T, n * T, s * T,
                                      lambda m: torch.randn(m, i, device=dev, dtype=bf))
    r["q.k^T bmm"] = check("", lambda x: x @ x.transpose(-1, -2), n * heads, s * heads,
                           lambda m: torch.randn(m, T, d, device=dev, dtype=bf))
    r["probs.v bmm"] = check("", lambda x: torch.softmax(x.float(), -1).to(bf) @ x, n * heads,
                             s * heads, lambda m: torch.randn(m, T, T, device=dev, dtype=bf))
    r["sdpa"] = check("", lambda x: torch.nn.functional.scaled_dot_product_attention(x, x, x),
                      n, s, lambda m: torch.randn(m, heads, T, d, device=dev, dtype=bf))
    r["layer_norm"] = check("", lambda x: torch.nn.functional.layer_norm(x, (H,)), n, s,
                            lambda m: torch.randn(m, T, H, device=dev, dtype=bf))
    r["lora bmm"] = check("", lambda x: x @ A[: x.shape[0]].transpose(1, 2).to(bf), 36, K,
                          lambda m: torch.randn(m, b * T, H, device=dev, dtype=bf))
    # The LoRA weight gradient: per cell, x_kᵀ · dy_k over its b·T rows.
    r["lora dA bmm"] = check("", lambda x: x.transpose(1, 2) @ x[..., :8], 36, K,
                             lambda m: torch.randn(m, b * T, H, device=dev, dtype=bf))
    for name, v in r.items():
        print(f"K={K:2d}  {name:16s} max|Δ| = {v:.3e}  {'same bits' if v == 0 else 'DIFFERS'}")
