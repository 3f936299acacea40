"""Follow-up: the stacked classification head (one [b, hidden] × [hidden, classes] GEMM per cell,
batched over the K cells, bias added by baddbmm), forward and backward: the first K cells' numbers
in a pack of 36 against a pack of K."""
import torch

torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16
b, H = 32, 384


def run(x, w, bias, dy):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    y = bias.to(bf).unsqueeze(1).baddbmm(x, w.to(bf).transpose(1, 2))
    y.backward(dy)
    return y.detach(), x.grad, w.grad, bias.grad


for C in (50, 6, 2):
    x = torch.randn(36, b, H, device=dev, dtype=bf)
    w = torch.randn(36, C, H, device=dev) * 0.05
    bias = torch.randn(36, C, device=dev) * 0.05
    dy = torch.randn(36, b, C, device=dev, dtype=bf)
    full = run(x, w, bias, dy)
    for K in (15, 8, 5, 3, 1):
        part = run(x[:K], w[:K], bias[:K], dy[:K])
        diffs = [(f[:K].float() - p.float()).abs().max().item() for f, p in zip(full, part)]
        print(f"classes={C:2d} K={K:2d}  y {diffs[0]:.2e}  dX {diffs[1]:.2e}  dW {diffs[2]:.2e}  db {diffs[3]:.2e}")
