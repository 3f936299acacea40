"""Per-cell attention at RoBERTa K = 16 (32 rows x 12 heads x 128 tokens x 64, bf16, dropout 0.1):
which SDPA backend and which mask form is fastest, forward + backward of one layer's 16 calls
and the cat (issue 9; runs no etagrid code). Also two elementwise questions of the same step:
the hidden dropout as a broadcast multiply then an add, against one broadcast addcmul; and what
the LoRA path's multiply by scaling 1.0 costs.

Per backend and mask form it prints kernel ms a layer and whether two runs from the same seed give the
same output bit for bit (what per-cell dropout needs). Mask forms: the boolean padding mask
(etagrid today: SDPA turns it into an additive one each call), the additive float mask made
once, and no mask (what transformers passes when a batch has no padding).
    python3 bench/gpu/probe/sdpa_backends.py
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

K, ROWS, H, T, D, P = 16, 32, 12, 128, 64, 0.1


def ms(f, n=30):
    """GPU time of one call of f in ms: the sum of its kernels' times under the profiler (wall
    time would count Python's launch overhead, which etagrid's step does not pay: it is GPU-bound)."""
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            f()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == cuda)
    return us / 1e3 / n


def layer(q, k, v, masks, backend):
    outs = []
    with sdpa_kernel([backend]):
        for c, (qc, kc, vc) in enumerate(zip(q.split(ROWS), k.split(ROWS), v.split(ROWS))):
            torch.manual_seed(1000 + c % 2)
            m = None if masks is None else masks[c]
            o = F.scaled_dot_product_attention(
                qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=m, dropout_p=P
            )
            outs.append(o.transpose(1, 2))
    return torch.cat(outs, 0)


def main():
    import warnings

    warnings.filterwarnings("ignore")
    print(torch.cuda.get_device_name(), torch.__version__)
    g = torch.Generator(device="cuda").manual_seed(1)
    mk = lambda: torch.randn(K * ROWS, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    q, k, v = mk(), mk(), mk()
    full = torch.ones(K * ROWS, 1, 1, T, device="cuda", dtype=torch.bool)
    padded = full.clone()
    padded[::2, :, :, (3 * T) // 4 :] = False
    grad = torch.randn(K * ROWS, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    forms = {
        "bool (all ones)": list(full.split(ROWS)),
        "float (all zeros)": [torch.zeros_like(m, dtype=torch.bfloat16) for m in full.split(ROWS)],
        "none": None,
        "bool (padded)": list(padded.split(ROWS)),
        "float (padded)": [
            torch.zeros_like(m, dtype=torch.bfloat16).masked_fill(~m, float("-inf")) for m in padded.split(ROWS)
        ],
    }
    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
    }
    for bname, backend in backends.items():
        for fname, masks in forms.items():
            try:
                step = lambda: torch.autograd.backward(layer(q, k, v, masks, backend), grad)
                a = layer(q, k, v, masks, backend)
                b = layer(q, k, v, masks, backend)
                t = ms(step)
                print(f"{bname:9} {fname:18} {t:7.3f} ms a layer  same seed, same output: {bool(torch.equal(a, b))}")
            except RuntimeError as e:
                print(f"{bname:9} {fname:18} not available: {str(e).splitlines()[0][:90]}")
    n = K * ROWS * T * H * D
    x, r = (torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g).view(K, -1) for _ in range(2))
    m = torch.rand(1, n // K, device="cuda", dtype=torch.bfloat16, generator=g)
    print(f"hidden dropout then residual: mul+add {ms(lambda: x * m + r, 200):.4f} ms  "
          f"addcmul {ms(lambda: torch.addcmul(r, x, m), 200):.4f} ms  plain add {ms(lambda: x + r, 200):.4f} ms")
    print(f"LoRA scaling: x * 1.0 {ms(lambda: x * 1.0, 200):.4f} ms a call")


if __name__ == "__main__":
    main()
