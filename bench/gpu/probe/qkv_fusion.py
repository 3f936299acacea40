"""One RoBERTa-base attention block at K = 16 (16 cells x 32 rows x 128 tokens, bf16, LoRA r = 8 on
query and value, per-cell cuDNN attention with dropout 0.1): forward + backward kernel time of
four ways to compute the projections (issue 9; runs no etagrid code).

- separate: etagrid today, three frozen GEMMs (query, key, value), each LoRA path its own two
  batched GEMMs, added to its projection;
- fused qkv: one frozen GEMM against the three weights stacked [2304, 768], split into q, k, v;
- fused A: the query's and value's LoRA A as one batched GEMM [K, 768, 16], split before B;
- both.

Backward flows into x (a middle layer's input needs its gradient) and into A and B. Also: the
embeddings' dedup (one seed's rows once, expanded), and the first layer's projections for rows
that are the same in every cell.
    python3 bench/gpu/probe/qkv_fusion.py
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sdpa_backends import ms  # kernel time of one call under the profiler (this directory)

K, ROWS, H, T, D, R, P = 16, 32, 12, 128, 64, 8, 0.1
HID = H * D


def attention(q, k, v):
    outs = []
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        split = lambda x: x.view(K * ROWS, T, H, D).split(ROWS)
        for c, (qc, kc, vc) in enumerate(zip(split(q), split(k), split(v))):
            torch.manual_seed(1000)
            o = F.scaled_dot_product_attention(
                qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), dropout_p=P
            )
            outs.append(o.transpose(1, 2))
    return torch.cat(outs, 0).reshape(K * ROWS, T, HID)


def lora(x, a, b):
    return x.reshape(K, -1, HID).bmm(a.to(x.dtype).transpose(1, 2)).bmm(b.to(x.dtype).transpose(1, 2)).reshape(x.shape)


def main():
    import warnings

    warnings.filterwarnings("ignore")
    print(torch.cuda.get_device_name(), torch.__version__)
    g = torch.Generator(device="cuda").manual_seed(1)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rnd = lambda *s, **kw: (torch.randn(*s, generator=g, **{**bf, **kw}) * 0.02)
    x = rnd(K * ROWS, T, HID).requires_grad_()
    wq, wk, wv = rnd(HID, HID), rnd(HID, HID), rnd(HID, HID)
    bq, bk, bv = rnd(HID), rnd(HID), rnd(HID)
    wqkv, bqkv = torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv])
    f32 = dict(dtype=torch.float32)
    aq, av = rnd(K, R, HID, **f32).requires_grad_(), rnd(K, R, HID, **f32).requires_grad_()
    bq_, bv_ = rnd(K, HID, R, **f32).requires_grad_(), rnd(K, HID, R, **f32).requires_grad_()
    grad = torch.randn(K * ROWS, T, HID, generator=g, **bf)

    def separate():
        q = F.linear(x, wq, bq) + lora(x, aq, bq_)
        k = F.linear(x, wk, bk)
        v = F.linear(x, wv, bv) + lora(x, av, bv_)
        return q, k, v

    def fused_qkv():
        q, k, v = F.linear(x, wqkv, bqkv).split(HID, -1)
        return q + lora(x, aq, bq_), k, v + lora(x, av, bv_)

    def lora2(x):
        xa = x.reshape(K, -1, HID).bmm(torch.cat([aq, av], 1).to(x.dtype).transpose(1, 2))
        ha, hv = xa.split(R, -1)
        up = lambda h, b: h.bmm(b.to(x.dtype).transpose(1, 2)).reshape(x.shape)
        return up(ha, bq_), up(hv, bv_)

    def fused_a():
        dq, dv = lora2(x)
        return F.linear(x, wq, bq) + dq, F.linear(x, wk, bk), F.linear(x, wv, bv) + dv

    def both():
        q, k, v = F.linear(x, wqkv, bqkv).split(HID, -1)
        dq, dv = lora2(x)
        return q + dq, k, v + dv

    ref = None
    for name, proj in [("separate", separate), ("fused qkv", fused_qkv), ("fused A", fused_a), ("both", both)]:
        def step():
            x.grad = None
            torch.autograd.backward(attention(*proj()), grad)
        step()
        out = (attention(*proj()).float(), x.grad.float())
        if ref is None:
            ref = out
        err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(out, ref))
        print(f"{name:10} {ms(step):7.3f} ms a layer (forward + backward, kernels)  max rel diff vs separate {err:.2e}")

    # Embeddings: every cell's rows computed (today) against one seed's once, expanded.
    wte = rnd(50265, HID)
    ids = torch.randint(5, 1000, (ROWS, T), device="cuda").repeat(K, 1)
    pos = torch.arange(T, device="cuda").expand(K * ROWS, T)
    wpe = rnd(514, HID)
    ln_w, ln_b = torch.ones(HID, **bf), torch.zeros(HID, **bf)

    def emb_all():
        e = F.embedding(ids, wte) + F.embedding(pos, wpe)
        return F.layer_norm(e, (HID,), ln_w, ln_b)

    def emb_once():
        e = F.embedding(ids[:ROWS], wte) + F.embedding(pos[:ROWS], wpe)
        return F.layer_norm(e, (HID,), ln_w, ln_b).unsqueeze(0).expand(K, -1, -1, -1).reshape(K * ROWS, T, HID)

    print(f"embeddings, every cell {ms(emb_all):.3f} ms; one seed's rows, expanded {ms(emb_once):.3f} ms")
    x0 = rnd(K * ROWS, T, HID)
    k_all = lambda: F.linear(x0, wk, bk)
    k_once = lambda: F.linear(x0[:ROWS], wk, bk).unsqueeze(0).expand(K, -1, -1, -1).reshape(K * ROWS, T, HID)
    print(f"first layer's key, every cell {ms(k_all):.3f} ms; once, expanded {ms(k_once):.3f} ms")


if __name__ == "__main__":
    main()
