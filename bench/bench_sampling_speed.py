"""Sampling speed on a CPU: what `ddim.generate` gains from batches of 64 and channels-last weights (`cpu_layout`).

    python bench/bench_sampling_speed.py [--threads 2] [--rounds 5] [--steps 4]

Times DDIM steps of the shipped reference model (1.3M parameters) in four settings, alternated round by round in one
run so that a busy machine slows them alike: batch 256 or 64, weights contiguous (what `sample` gets from a freshly
loaded model) or channels-last (what `generate` uses on a CPU). Reports the median CPU milliseconds per image and step,
and each setting's speed-up over the old `generate` (batch 256, contiguous).
"""
import argparse, copy, os, statistics, sys, time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--steps', type=int, default=4, help='DDIM steps per timed call')
    a = p.parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    from ddpm_from_scratch.train import build_schedule, load_pretrained
    from ddpm_from_scratch.ddim import cpu_layout, sample
    model, cfg = load_pretrained()
    sched = build_schedule(cfg)
    nets = {'contiguous': model, 'channels-last': cpu_layout(copy.deepcopy(model))}
    settings = [(bs, fmt) for bs in (256, 64) for fmt in nets]
    times = {s: [] for s in settings}
    for r in range(a.rounds + 1):  # round 0 warms up and is not counted
        for bs, fmt in settings:
            g = torch.Generator().manual_seed(r)
            c0 = time.process_time()
            sample(nets[fmt], (bs, 1, 32, 32), sched, 'ddim', generator=g, progress=False, steps=a.steps)
            if r: times[(bs, fmt)].append(1e3 * (time.process_time() - c0) / (bs * a.steps))
    base = statistics.median(times[(256, 'contiguous')])
    print(f"CPU ms per image and DDIM step, median of {a.rounds} alternated rounds, {a.threads} thread(s), "
          f"{sum(p.numel() for p in model.parameters()):,}-parameter reference model:")
    for (bs, fmt), ts in times.items():
        med = statistics.median(ts)
        print(f"  batch {bs:3d}, {fmt:13s}: {med:6.2f} ms   {base / med:4.2f}x")
    return 0


if __name__ == '__main__': sys.exit(main())
