"""How fast the hidden-state dropout's multiply runs on the GPU at RoBERTa K = 16 (issue 9).

etagrid draws one mask per seed and multiplies the pack's [K, rows, t, h] activations by it,
broadcast over the cells of that seed. Nsight Compute showed that multiply as PyTorch's
non-vectorised broadcast kernel (49 launches, 7.0 ms of a 99-ms step). This times, per call and
in bf16, the broadcast multiply against the same product with the mask expanded to the full shape
first (what a vectorised kernel needs), and a plain same-shape multiply as the floor.
    python3 bench/gpu/probe/mask_mul.py
"""

import torch


def ms(f, n=200):
    for _ in range(10):
        f()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        f()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main():
    print(torch.cuda.get_device_name(), torch.__version__)
    for k, rows, t, h in [(16, 32, 128, 768), (36, 32, 64, 384)]:
        x = torch.randn(k, rows, t, h, device="cuda", dtype=torch.bfloat16)
        m = torch.rand(1, rows, t, h, device="cuda", dtype=torch.bfloat16)
        full = m.expand_as(x).contiguous()
        print(
            f"K={k} {rows}x{t}x{h}: broadcast {ms(lambda: x * m):.4f} ms  "
            f"expand+contiguous then multiply {ms(lambda: x * m.expand_as(x).contiguous()):.4f} ms  "
            f"same-shape multiply {ms(lambda: x * full):.4f} ms"
        )


if __name__ == "__main__":
    main()
