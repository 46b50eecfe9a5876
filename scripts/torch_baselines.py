#!/usr/bin/env python3
"""PyTorch baselines of the carried GPU session (scripts/gpu-session.sh), measured on the same GPU
in the same session as medsa's `xtask bench`, and the ratios against it.

  torch_baselines.py OUT_DIR [--wheels DIR] [--iters N] [--dry-run]

Writes OUT_DIR/torch-baselines.txt (PyTorch medians) and, when OUT_DIR/bench.txt (medsa's bench
of the same run) is there, OUT_DIR/comparison.txt (medsa vs PyTorch, with the targets of issue
16). Baselines:

  sdpa ViT-B b1 / b8   F.scaled_dot_product_attention, bf16, 4096 tokens, head dim 64,
                       batch*heads 12 / 96, with a float bias [B, H, 4096, 4096] (SAM's
                       decomposed rel-pos bias, materialised once outside the timing)
  sdpa+bias ViT-B b1   the same plus building that bias from the two rel-pos tables per call
                       (what the official SAM code does in every global block)
  SAM ViT-B 1024 b1    the official `segment_anything` image encoder (random weights), bf16,
                       batch 1, image uploaded and embedding synchronised per call

Timing: CUDA events around `iters` back-to-back calls after a warm-up, median of 5 repeats per
call. Exit status: 0 measured (or, with --dry-run, checked what this machine allows), 1 a
baseline failed, 2 no CUDA device in torch (without --dry-run).
"""

import glob
import os
import re
import sys
import time


def parse_args(argv):
    args = {"out": None, "wheels": None, "iters": 10, "dry": False}
    it = iter(argv)
    for a in it:
        if a == "--wheels":
            args["wheels"] = next(it)
        elif a == "--iters":
            args["iters"] = int(next(it))
        elif a == "--dry-run":
            args["dry"] = True
        elif args["out"] is None:
            args["out"] = a
        else:
            raise SystemExit(f"unexpected argument {a!r}")
    if args["out"] is None:
        raise SystemExit(__doc__)
    return args


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_cuda_ms(torch, fn, iters):
    """Median over 5 repeats of (event time of `iters` back-to-back calls) / iters."""
    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        per_call.append(start.elapsed_time(end) / iters)
    return median(per_call)


def rel_bias(torch, q, rel_h, rel_w, grid):
    """SAM's add_decomposed_rel_pos bias for q [B*H, N, d] and tables [grid, grid, d]."""
    bh, n, d = q.shape
    r_q = q.reshape(bh, grid, grid, d)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(bh, n, n)


def sdpa_rows(torch, device, dtype, iters, grid, hd, batches):
    import torch.nn.functional as F

    rows = []
    n = grid * grid
    for b in batches:
        heads = 12
        g = torch.Generator(device=device).manual_seed(11)
        q, k, v = (torch.randn(b, heads, n, hd, device=device, dtype=dtype, generator=g) for _ in range(3))
        rel_h = torch.randn(grid, grid, hd, device=device, dtype=dtype, generator=g) * 0.1
        rel_w = torch.randn(grid, grid, hd, device=device, dtype=dtype, generator=g) * 0.1
        q3 = q.reshape(b * heads, n, hd)
        bias = rel_bias(torch, q3, rel_h, rel_w, grid).reshape(b, heads, n, n)
        run = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # noqa: E731
        rows.append((f"sdpa ViT-B b{b}", f"bh{b * heads} {grid}x{grid} d{hd}", measure(torch, device, run, iters)))
        if b == batches[0]:
            def with_bias():
                m = rel_bias(torch, q3, rel_h, rel_w, grid).reshape(b, heads, n, n)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

            rows.append(
                (f"sdpa+bias ViT-B b{b}", f"bh{b * heads} {grid}x{grid} d{hd}", measure(torch, device, with_bias, iters))
            )
        del q, k, v, bias
    return rows


def measure(torch, device, fn, iters):
    if device == "cuda":
        return time_cuda_ms(torch, fn, iters)
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def sam_row(torch, device, dtype, iters, img_size):
    if img_size == 1024:
        from segment_anything import sam_model_registry

        enc = sam_model_registry["vit_b"](checkpoint=None).image_encoder
    else:
        # A dry run on a CPU: the same encoder class, small (2 blocks, one global).
        from segment_anything.modeling import ImageEncoderViT

        enc = ImageEncoderViT(img_size=img_size, depth=2, embed_dim=768, num_heads=12, out_chans=256,
                              use_rel_pos=True, window_size=14, global_attn_indexes=[1])
    enc = enc.to(device=device, dtype=dtype).eval()
    x_host = torch.randn(1, 3, img_size, img_size, dtype=dtype)

    def run():
        with torch.inference_mode():
            return enc(x_host.to(device, non_blocking=False))

    name = f"SAM ViT-B {img_size} b1" + ("" if device == "cuda" else " (CPU, 2 blocks: dry run)")
    return (name, f"official image_encoder {str(dtype).replace('torch.', '')}", measure(torch, device, run, max(1, iters // 2)))


def ours(bench_txt):
    """medsa's medians from the bench table of the same run."""
    got = {}
    if not os.path.exists(bench_txt):
        return got
    for line in open(bench_txt):
        m = re.match(r"(attention flash ViT-B b\d)\s+\S+ \S+ \S+\s+([\d.]+)", line)
        if m:
            got[m.group(1)] = float(m.group(2))
        m = re.match(r"SAM ViT-B 1024\s+1\s+([\d.]+)", line)
        if m:
            got["SAM ViT-B 1024 b1"] = float(m.group(1))
    return got


def main(argv):
    args = parse_args(argv)
    os.makedirs(args["out"], exist_ok=True)
    if args["wheels"]:
        # Pure-Python wheels import straight from the zip (no installer on the GPU machine).
        sys.path[:0] = sorted(glob.glob(os.path.join(args["wheels"], "*.whl")))
    lines = []
    say = lambda s: (print(s), lines.append(s))  # noqa: E731
    try:
        import torch
    except ImportError as e:
        say(f"skipped: torch is not importable here ({e}); nothing was measured")
        open(os.path.join(args["out"], "torch-baselines.txt"), "w").write("\n".join(lines) + "\n")
        return 0 if args["dry"] else 1
    cuda = torch.cuda.is_available()
    if not cuda and not args["dry"]:
        say(f"no CUDA device visible to torch {torch.__version__}: nothing was measured")
        open(os.path.join(args["out"], "torch-baselines.txt"), "w").write("\n".join(lines) + "\n")
        return 2
    device = "cuda" if cuda else "cpu"
    say(f"torch {torch.__version__}, cuda {torch.version.cuda}, device "
        f"{torch.cuda.get_device_name(0) if cuda else 'cpu (dry run: not a GPU result)'}")
    dtype = torch.bfloat16
    rows, failed = [], 0
    grid, batches, img = (64, [1, 8], 1024) if cuda else (8, [1], 64)
    for what, fn in [
        ("sdpa", lambda: sdpa_rows(torch, device, dtype, args["iters"], grid, 64, batches)),
        ("sam", lambda: [sam_row(torch, device, dtype, args["iters"], img)]),
    ]:
        try:
            rows += fn()
        except Exception as e:  # a failed baseline is reported, the others still run
            say(f"{what}: FAILED: {type(e).__name__}: {e}")
            failed += 1
    say(f"{'baseline':<34} {'shape':<30} {'median ms':>10}")
    for name, shape, ms in rows:
        say(f"{name:<34} {shape:<30} {ms:>10.3f}")
    open(os.path.join(args["out"], "torch-baselines.txt"), "w").write("\n".join(lines) + "\n")
    mine = ours(os.path.join(args["out"], "bench.txt"))
    if cuda and mine:
        theirs = {name: ms for name, _, ms in rows}
        out = [f"{'case':<26} {'medsa ms':>10} {'PyTorch ms':>11} {'speedup':>8} {'target':>7}"]
        for ours_name, torch_name, target in [
            ("attention flash ViT-B b1", "sdpa ViT-B b1", 1.5),
            ("attention flash ViT-B b8", "sdpa ViT-B b8", 1.5),
            ("SAM ViT-B 1024 b1", "SAM ViT-B 1024 b1", 2.0),
        ]:
            if ours_name in mine and torch_name in theirs:
                s = theirs[torch_name] / mine[ours_name]
                out.append(f"{ours_name:<26} {mine[ours_name]:>10.3f} {theirs[torch_name]:>11.3f} "
                           f"{s:>7.2f}x {target:>6.1f}x {'met' if s >= target else 'MISSED'}")
        open(os.path.join(args["out"], "comparison.txt"), "w").write("\n".join(out) + "\n")
        print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
