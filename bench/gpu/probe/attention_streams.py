"""Per-cell attention on several CUDA streams (a probe for issue 9; it runs no etagrid code).

etagrid's per-cell attention (crates/etagrid-train/src/dropout.rs `per_cell`) calls SDPA once per
cell with the generator seeded per (seed, step, site), so a cell's dropout masks do not depend on
its pack. At RoBERTa-base K = 16 (32 x 128) those are 16 small cuDNN calls a layer, forward and
backward; Nsight showed their kernels at 11.9 ms of a 75.5 ms step, the small ones (dot(dO, O),
dq conversion) at 8-9 us each for ~2 us of bytes. This probe asks how much of that comes back if
the cells' calls run on S streams at once (the autograd engine runs each backward on its
forward's stream), against one stream and against one fused call over the pack.

GPU time only: the main stream first sleeps (torch.cuda._sleep) while Python queues every layer's
forward and backward, so Python's launch overhead does not count; events after the sleep and at
the end give the time. Also checks that each cell's output on S streams equals one stream's,
bit for bit (the masks depend on the seeding alone, not on the stream).
Usage: python3 bench/gpu/probe/attention_streams.py"""
import torch
import torch.nn.functional as F

P = 0.1
dev = "cuda"


def qkv(k, b, h, t, d):
    g = torch.Generator(device=dev).manual_seed(1)
    # As etagrid has them: views [n, heads, t, d] of projections laid out [n, t, heads, d].
    mk = lambda: torch.randn(k * b, t, h, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    return mk(), mk(), mk()


def fused(q, k, v, cells, site, streams):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=P).transpose(1, 2)


def explicit(q, k, v, cells, site, streams):
    """etagrid's explicit path: scores, softmax in bf16, one mask per seed broadcast over the cells."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    n, h, t, d = q.shape
    rows = n // cells
    p = torch.softmax((q * (1.0 / d**0.5)) @ k.transpose(-2, -1), -1, dtype=q.dtype)
    torch.manual_seed(1000 * site + 7)
    m = torch.empty(rows, h, t, t, device=dev, dtype=q.dtype).bernoulli_(1 - P) * (1 / (1 - P))
    return ((p.view(cells, rows, h, t, t) * m).view(n, h, t, t) @ v).transpose(1, 2)


def per_cell(q, k, v, cells, site, streams):
    rows = q.shape[0] // cells
    main = torch.cuda.current_stream()
    outs = []
    for c, (qc, kc, vc) in enumerate(zip(q.split(rows), k.split(rows), v.split(rows))):
        s = streams[c % len(streams)] if streams else main
        s.wait_stream(main)
        with torch.cuda.stream(s):
            torch.manual_seed(1000 * site + 7)
            o = F.scaled_dot_product_attention(qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), dropout_p=P)
            outs.append(o.transpose(1, 2))
    for s in streams or []:
        main.wait_stream(s)
    for o in outs:
        o.record_stream(main)
    return torch.cat(outs, 0)


def gpu_ms(f, args, cells, streams, layers=6):
    main = torch.cuda.current_stream()
    for i in range(2):
        f(*args, cells, i, streams).float().sum().backward()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(4_000_000_000)  # ~2 s at H200 clocks: Python queues everything meanwhile
    e0.record(main)
    for i in range(layers):
        f(*args, cells, i, streams).float().sum().backward()
    e1.record(main)
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / layers


print(torch.cuda.get_device_name(), torch.__version__, flush=True)
for name, (k, b, h, t, d) in {
    "RoBERTa-base K=16 32x128": (16, 32, 12, 128, 64),
    "RoBERTa-base K=32 32x128": (32, 32, 12, 128, 64),
    "MiniLM MR K=36 32x64": (36, 32, 12, 64, 32),
    "MiniLM TREC K=36 32x32": (36, 32, 12, 32, 32),
}.items():
    args = qkv(k, b, h, t, d)
    row = [f"fused {gpu_ms(fused, args, k, None):.3f}", f"explicit {gpu_ms(explicit, args, k, None):.3f}",
           f"1 stream {gpu_ms(per_cell, args, k, None):.3f}"]
    for n in (2, 4, 8):
        streams = [torch.cuda.Stream() for _ in range(n)]
        row.append(f"{n} streams {gpu_ms(per_cell, args, k, streams):.3f}")
    with torch.no_grad():
        one = per_cell(*args, k, 5, None)
        many = per_cell(*args, k, 5, [torch.cuda.Stream() for _ in range(4)])
        torch.cuda.synchronize()
    print(f"{name:26} GPU ms per layer fwd+bwd: " + "  ".join(row) + f"  | 4 streams = 1 stream: {torch.equal(one, many)}", flush=True)
