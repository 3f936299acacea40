"""Pack-invariant attention-probability dropout through a fused kernel (issue 9), a probe on the
GPU that runs no etagrid code. Dropout on softmax probabilities is not an attention mask: masking
dropped keys would renormalise over the kept ones. But with every key given twice, once as
itself and once as a copy whose value is zero, and a bias of -inf on the copy that is not
wanted (the kept copy where the mask drops, the zero copy where it keeps), the softmax over the
2t keys has exactly one finite entry per key, so its normaliser is the full one, and

    softmax([s + b_keep, s + b_drop]) · [v; 0] = Σ_j M_ij P_ij v_j = (1 - p) · dropout(P) v.

That is SDPA with a float mask (PyTorch's memory-efficient kernel, which has a backward with
respect to q, k and v) and no dropout of its own: the masks stay etagrid's, drawn per seed.

Compares, per layer, forward + backward, at four pack shapes:
  explicit  what etagrid does today (nn.rs `explicit_attention`): bf16 scores, masked_fill,
            softmax, the seed's mask multiplied in, P·v;
  split     the above, the same masks;
and checks in fp32 that split's output and gradients equal explicit's (max relative difference).
Usage: python3 bench/gpu/probe/split_keys.py"""
import time

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"
P = 0.1


def inputs(k, b, h, t, d, dtype):
    g = torch.Generator(device=dev).manual_seed(1)
    mk = lambda: torch.randn(k * b, h, t, d, device=dev, dtype=dtype, generator=g).requires_grad_()
    q, kk, v = mk(), mk(), mk()
    mask = torch.ones(k * b, 1, 1, t, device=dev, dtype=torch.bool)
    mask[::2, :, :, (3 * t) // 4:] = False  # every other row padded after 3/4 of its length
    return q, kk, v, mask


def draw(rows, h, t, dtype, site):
    torch.manual_seed(1000 + site)
    return torch.empty(rows, h, t, t, device=dev, dtype=dtype).bernoulli_(1 - P)


def explicit(q, k, v, mask, cells, site):
    n, h, t, d = q.shape
    rows = n // cells
    s = (q * (1.0 / d**0.5)) @ k.transpose(-2, -1)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1, dtype=q.dtype)
    m = draw(rows, h, t, q.dtype, site) * (1 / (1 - P))
    p = (p.view(cells, rows, h, t, t) * m.unsqueeze(0)).view(n, h, t, t)
    return p @ v


def split(q, k, v, mask, cells, site):
    n, h, t, d = q.shape
    rows = n // cells
    keep = draw(rows, h, t, q.dtype, site).bool()  # [rows, h, t, t], shared by the seed's cells
    inf = float("-inf")
    zero = torch.zeros((), device=dev, dtype=q.dtype)
    ninf = torch.full((), inf, device=dev, dtype=q.dtype)
    per_seed = torch.cat([torch.where(keep, zero, ninf), torch.where(keep, ninf, zero)], -1)
    pad = torch.where(mask, zero, ninf).repeat(1, 1, 1, 2)  # [n, 1, 1, 2t]
    bias = (per_seed.unsqueeze(0) + pad.view(cells, rows, 1, 1, 2 * t)).view(n, h, t, 2 * t)
    k2 = torch.cat([k, k], 2)
    v2 = torch.cat([v * (1 / (1 - P)), torch.zeros_like(v)], 2)
    return F.scaled_dot_product_attention(q, k2, v2, attn_mask=bias)


def timed(f, args, cells, reps=20):
    for i in range(3):
        f(*args, cells, i).float().sum().backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(reps):
        f(*args, cells, i).float().sum().backward()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / reps


def agree(k, b, h, t, d):
    outs = []
    for f in (explicit, split):
        q, kk, v, mask = inputs(k, b, h, t, d, torch.float32)
        o = f(q, kk, v, mask, k, 5)
        w = torch.randn_like(o, generator=torch.Generator(device=dev).manual_seed(2))
        # Padded query rows read nothing real: compare real rows only.
        (o * w * mask.transpose(-1, -2)).sum().backward()
        outs.append([(o * mask.transpose(-1, -2)).detach(), q.grad, kk.grad, v.grad])
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    return max(rel(a, b) for a, b in zip(outs[1], outs[0]))


print(torch.cuda.get_device_name(), torch.__version__)
for name, (k, b, h, t, d) in {
    "RoBERTa-base K=16 32x128": (16, 32, 12, 128, 64),
    "MiniLM MR K=36 32x64": (36, 32, 12, 64, 32),
    "MiniLM TREC K=36 32x32": (36, 32, 12, 32, 32),
    "MiniLM MR K=5 32x64": (5, 32, 12, 64, 32),
}.items():
    args = inputs(k, b, h, t, d, torch.bfloat16)
    ms = {f.__name__: timed(f, args, k) for f in (explicit, split)}
    print(
        f"{name:26} fwd+bwd ms per layer, bf16: explicit {ms['explicit']:.3f}  split {ms['split']:.3f}"
        f"  | fp32 split vs explicit, max rel diff: {agree(k, b, h, t, d):.2e}",
        flush=True,
    )
