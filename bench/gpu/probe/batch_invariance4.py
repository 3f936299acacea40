"""Follow-up: per-cell reductions over a cell's rows (the gradient of a stacked head's bias is the
sum of its rows' output gradients): the first K cells' sums in a batch of 36 against a batch of K."""
import torch

torch.manual_seed(0)
dev = "cuda"
b = 32
for kind in (torch.bfloat16, torch.float32):
    for out in (50, 6, 384):
        dy = torch.randn(36, b, out, device=dev, dtype=kind)
        for K in (15, 8, 5, 3, 2, 1):
            d = (dy.sum(1)[:K] - dy[:K].sum(1)).abs().max().item()
            bias = torch.zeros(36, 1, out, device=dev, dtype=kind, requires_grad=True)
            (bias.expand(36, b, out) * dy).sum().backward()
            g36 = bias.grad[:K].clone()
            bk = torch.zeros(K, 1, out, device=dev, dtype=kind, requires_grad=True)
            (bk.expand(K, b, out) * dy[:K]).sum().backward()
            d2 = (g36 - bk.grad).abs().max().item()
            print(f"{str(kind):15s} out={out:3d} K={K:2d} sum over rows {d:.2e}  expanded-bias grad {d2:.2e}")
