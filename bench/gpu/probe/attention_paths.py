"""Attention with dropout, three ways, on the GPU (a probe for the next step of issue 9; it runs
no etagrid code). For a pack of K cells of b rows each, per layer, forward + backward:

  fused     one SDPA call over the K·b rows, dropout drawn by the kernel: fast, but a cell's masks
            depend on where its rows sit in the pack (what etagrid avoids);
  explicit  what etagrid does (crates/etagrid-train/src/nn.rs `explicit_attention` with
            dropout.rs): scores in bf16, padding masked, softmax written in bf16, one dropout mask
            per seed drawn from a generator seeded per (seed, step, site), broadcast over the
            seed's cells;
  per-cell  one SDPA call per cell, the generator seeded per (seed, step, site) before each: the
            kernel's draws then depend on the cell's own rows only. The cells' rows are slices,
            whose backward writes each cell's gradient into a zeroed tensor of the whole pack;
  per-cell-split  the same, the rows taken with torch.split, whose backward is one cat
            (added 2026-12-01 afternoon).

It also checks that per-cell is pack-invariant: a cell's output in a pack equals its output when
its rows are run alone (same seed), bit for bit. Prints one line per shape.
Usage: python3 bench/gpu/probe/attention_paths.py"""
import time

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
import os
dev = os.environ.get("PROBE_DEVICE", "cuda")
P = 0.1


def site_seed(seed, site):
    return (seed * 0x9E3779B97F4A7C15 + site * 0x94D049BB133111EB) % (2**63)


def inputs(k, b, h, t, d):
    g = torch.Generator(device=dev).manual_seed(1)
    mk = lambda: torch.randn(k * b, h, t, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    q, kk, v = mk(), mk(), mk()
    # Rows padded after 3/4 of their length every other row.
    mask = torch.ones(k * b, 1, 1, t, device=dev, dtype=torch.bool)
    mask[::2, :, :, (3 * t) // 4:] = False
    return q, kk, v, mask


def fused(q, k, v, mask, cells, site):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=P)


def explicit(q, k, v, mask, cells, site):
    n, h, t, d = q.shape
    rows = n // cells
    s = (q * (1.0 / d**0.5)) @ k.transpose(-2, -1)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1, dtype=q.dtype)
    torch.manual_seed(site_seed(0, site))
    m = torch.empty(rows, h, t, t, device=dev, dtype=q.dtype).bernoulli_(1 - P) * (1 / (1 - P))
    p = (p.view(cells, rows, h, t, t) * m.unsqueeze(0)).view(n, h, t, t)
    return p @ v


def per_cell(q, k, v, mask, cells, site):
    rows = q.shape[0] // cells
    outs = []
    for c in range(cells):
        sl = slice(c * rows, (c + 1) * rows)
        torch.manual_seed(site_seed(0, site))
        outs.append(F.scaled_dot_product_attention(q[sl], k[sl], v[sl], attn_mask=mask[sl], dropout_p=P))
    return torch.cat(outs, 0)


def per_cell_split(q, k, v, mask, cells, site):
    outs = []
    for qc, kc, vc, mc in zip(q.chunk(cells), k.chunk(cells), v.chunk(cells), mask.chunk(cells)):
        torch.manual_seed(site_seed(0, site))
        outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mc, dropout_p=P))
    return torch.cat(outs, 0)


def timed(f, args, cells, reps=20):
    for i in range(3):
        f(*args, cells, i).float().sum().backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(reps):
        f(*args, cells, i).float().sum().backward()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / reps


def kernel_ms(f, args, cells, reps=10):
    """GPU kernel time alone (the profiler's device time), so Python's launch overhead does not count."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(reps):
            f(*args, cells, i).float().sum().backward()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / reps


def invariant(k, b, h, t, d, f=per_cell):
    q, kk, v, mask = inputs(k, b, h, t, d)
    with torch.no_grad():
        packed = f(q, kk, v, mask, k, 7)
        c = k - 1
        sl = slice(c * b, (c + 1) * b)
        # Alone: the cell's rows as tensors of their own (as a worker of one cell has them).
        alone = f(q[sl].clone(), kk[sl].clone(), v[sl].clone(), mask[sl].clone(), 1, 7)
    return torch.equal(packed[sl], alone)


print(torch.cuda.get_device_name(), torch.__version__)
for name, (k, b, h, t, d) in {
    "RoBERTa-base K=16 32x128": (16, 32, 12, 128, 64),
    "MiniLM MR K=36 32x64": (36, 32, 12, 64, 32),
    "MiniLM TREC K=36 32x32": (36, 32, 12, 32, 32),
    "MiniLM MR K=5 32x64": (5, 32, 12, 64, 32),
}.items():
    args = inputs(k, b, h, t, d)
    ms = {f.__name__: timed(f, args, k) for f in (fused, explicit, per_cell, per_cell_split)}
    print(
        f"{name:26} fwd+bwd ms per layer: fused {ms['fused']:.3f}  explicit {ms['explicit']:.3f}  "
        f"per-cell {ms['per_cell']:.3f}  per-cell-split {ms['per_cell_split']:.3f}  | pack-invariant: "
        f"per-cell {invariant(k, b, h, t, d)}, per-cell-split {invariant(k, b, h, t, d, per_cell_split)}",
        flush=True,
    )
    ks = {f.__name__: kernel_ms(f, args, k) for f in (fused, explicit, per_cell_split)}
    print(
        f"{'':26} kernel ms per layer:  fused {ks['fused']:.3f}  explicit {ks['explicit']:.3f}  "
        f"per-cell-split {ks['per_cell_split']:.3f}",
        flush=True,
    )
