"""The LoRA B product added to the frozen output in place (a probe for issue 9; no etagrid code).

etagrid's adapted projection (crates/etagrid-train/src/nn.rs `Linear::forward_all`, lora.rs
`deltas`) computes y = x W^T + b, the adapters' B products up = (x A^T) B^T per cell, then
y + up: up is written, then read again with y and a third tensor written (one add a projection,
RoBERTa's query and value). `baddbmm_` on y itself lets the B product's GEMM read y as its C
operand and write the sum in place: no add. The out-of-place `baddbmm` was tried on 12-02 and
lost (its copy of C). Forward + backward of query, key and value with the shared A product, at
RoBERTa-base K = 16 (32 x 128), GPU time only (the stream sleeps while Python queues the work).
Also prints the largest relative difference between the two outputs (on the H200: 0, the same bits).
Usage: python3 bench/gpu/probe/inplace_up.py"""
import torch

dev = "cuda"
K, ROWS, T, D, R = 16, 32, 128, 768, 8
g = torch.Generator(device=dev).manual_seed(0)
x0 = torch.randn(K * ROWS, T, D, device=dev, dtype=torch.bfloat16, generator=g)
W = [torch.randn(D, D, device=dev, dtype=torch.bfloat16, generator=g) / D**0.5 for _ in range(3)]
bias = [torch.randn(D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3)]
A = [(torch.randn(K, R, D, device=dev, generator=g) / D**0.5).requires_grad_() for _ in range(2)]
B = [(torch.randn(K, D, R, device=dev, generator=g) * 0.01).requires_grad_() for _ in range(2)]


def layer(x, inplace):
    h = x.reshape(K, -1, D).bmm(torch.cat([a.to(x.dtype) for a in A], 1).transpose(1, 2))
    hs = h.split([R, R], 2)
    out = []
    for i, j in ((0, 0), (1, None), (2, 1)):
        y = torch.nn.functional.linear(x, W[i], bias[i])
        if j is not None:
            bt = B[j].to(x.dtype).transpose(1, 2)
            if inplace:
                y = y.view(K, -1, D).baddbmm_(hs[j], bt).view(x.shape)
            else:
                y = y + hs[j].bmm(bt).reshape(x.shape)
        out.append(y)
    return out


def run(inplace, reps):
    x = x0.clone().requires_grad_()
    for _ in range(reps):
        q, k, v = layer(x, inplace)
        (q.float().sum() + k.float().sum() * 0.5 + (v.float() ** 2).sum() * 1e-3).backward()
    return x


def gpu_ms(inplace, reps=20):
    run(inplace, 2)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(2_000_000_000)
    e0.record()
    run(inplace, reps)
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / reps


print(torch.cuda.get_device_name(), torch.__version__, flush=True)
times = {False: [], True: []}
for _ in range(4):
    for ip in (False, True):
        times[ip].append(gpu_ms(ip))
with torch.no_grad():
    a, b = layer(x0, False), layer(x0, True)
    diff = max(((p.float() - q.float()).abs().max() / p.float().abs().max()).item() for p, q in zip(a, b))
print(f"q, k, v forward + backward, ms (alternated x4): add {' '.join(f'{t:.3f}' for t in times[False])}"
      f"  | in place {' '.join(f'{t:.3f}' for t in times[True])}  | max rel diff {diff:.2e}", flush=True)
