"""Follow-up of batch_invariance.py: linear layers with a bias (cublasLt's bias epilogue) and the
backward pass of a MiniLM-shaped block, rows of the first K cells in a batch of 36 against a batch
of K."""
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16
b, T, H, I = 32, 32, 384, 1536
if sys.argv[1:] == ["strict"]:
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
print("allow_bf16_reduced_precision_reduction =",
      torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
W1 = torch.randn(I, H, device=dev, dtype=bf) * 0.05
b1 = torch.randn(I, device=dev, dtype=bf) * 0.05
W2 = torch.randn(H, I, device=dev, dtype=bf) * 0.05
b2 = torch.randn(H, device=dev, dtype=bf) * 0.05
X = torch.randn(36 * b, T, H, device=dev, dtype=bf)


def block(x):
    return F.linear(F.gelu(F.linear(x, W1, b1)), W2, b2)


def fwd_bwd(x):
    x = x.clone().requires_grad_(True)
    y = block(x)
    y.float().square().sum().backward()
    return y.detach(), x.grad


for K in (15, 8, 5, 3, 2, 1):
    s = K * b
    with torch.no_grad():
        d_lin = (F.linear(X, W1, b1)[:s] - F.linear(X[:s], W1, b1)).abs().max().item()
        d_lin2 = (F.linear(X.reshape(-1, H), W1, b1)[: s * T] - F.linear(X[:s].reshape(-1, H), W1, b1)).abs().max().item()
    y_full, g_full = fwd_bwd(X)
    y_part, g_part = fwd_bwd(X[:s])
    d_y = (y_full[:s] - y_part).abs().max().item()
    d_g = (g_full[:s] - g_part).abs().max().item()
    print(f"K={K:2d} linear+bias 3-D {d_lin:.2e}  2-D {d_lin2:.2e}  block fwd {d_y:.2e}  block dX {d_g:.2e}")
