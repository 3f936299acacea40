"""Follow-up: GEMMs with few rows — a sentence-level layer (BERT's pooler, the head) sees one row a
sequence, K·b rows in all: the first K cells' rows in a batch of 36 cells against a batch of K."""
import torch
import torch.nn.functional as F

torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16
b, H, C = 32, 384, 50
for kind in (bf, torch.float32):
    W = torch.randn(H, H, device=dev, dtype=kind) * 0.05
    bias = torch.randn(H, device=dev, dtype=kind) * 0.05
    X = torch.randn(36 * b, H, device=dev, dtype=kind)
    Wh = torch.randn(36, C, H, device=dev, dtype=kind) * 0.05
    for K in (15, 8, 5, 3, 2, 1):
        s = K * b
        with torch.no_grad():
            d1 = (F.linear(X, W, bias)[:s] - F.linear(X[:s], W, bias)).abs().max().item()
            d2 = (X @ W.T)[:s].sub(X[:s] @ W.T).abs().max().item()
            xb = X.reshape(36, b, H)
            d3 = (xb @ Wh.transpose(1, 2))[:K].sub(xb[:K] @ Wh[:K].transpose(1, 2)).abs().max().item()
            wk = W.T.expand(36, H, H)
            d4 = torch.bmm(xb, wk)[:K].sub(torch.bmm(xb[:K], wk[:K])).abs().max().item()
        print(f"{str(kind):15s} K={K:2d}  linear+bias {d1:.2e}  matmul {d2:.2e}  head bmm {d3:.2e}  per-cell bmm {d4:.2e}")
