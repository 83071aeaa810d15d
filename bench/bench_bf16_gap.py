"""Why bfloat16 autocast stays short of 2x on this CPU: two ways a bfloat16 training step could be faster, timed beside
the command line's own step, alternated within each round.

    python bench/bench_bf16_gap.py [--channels 32,64,128] [--n_res 2] [--bs 64] [--rounds 3] [--steps 10] [--threads 2]

- 'recipe': `cli.fit_recipe` with `precision='bf16'` (callbacks, EMA, lr schedule, data loading): what `ddpm_train`
  runs here;
- 'bare': the same network and batch size in a bare loop (noise, forward under autocast, MSE, backward, Adam) with no
  callbacks, no EMA and the batch already in memory: what is left once the training loop's overhead is gone;
- 'bf16 weights': the bare loop with the network cast to bfloat16 and no autocast, so nothing is cast on the way.
Each setting trains a fresh network for `--steps` steps per round; the median step (skipping the first two) is taken
per round, then the median over rounds, wall time and the process's CPU time.
"""
import argparse, statistics, time
from dataclasses import replace

import torch
import torch.nn.functional as F

from ddpm_from_scratch.cli import TrainConfig, build_model, fit_recipe

from bench_precision import StepClock  # bench/ is on the path when this runs as a script


def bare(cfg, steps, bf16_weights=False):
    "Wall and CPU seconds of each step of the bare loop."
    torch.manual_seed(0)
    model = build_model(cfg)
    if bf16_weights: model = model.to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5)
    x, wall, cpu = torch.randn(cfg.bs, 1, 32, 32), [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        t, eps = torch.randint(0, cfg.n_steps, (cfg.bs,)), torch.randn_like(x)
        xt = (x + eps).to(torch.bfloat16) if bf16_weights else x + eps
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=not bf16_weights):
            loss = F.mse_loss(model(xt, t).float(), eps)
        loss.backward(); opt.step(); opt.zero_grad()
        wall.append(time.perf_counter() - w); cpu.append(time.process_time() - c)
    return wall, cpu


def recipe(cfg, steps):
    clock = StepClock()
    fit_recipe(replace(cfg, total_steps=steps + 1), device='cpu', cbs=[clock])
    return clock.times, clock.cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--channels', default='32,64,128'); p.add_argument('--n_res', type=int, default=2)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(channels=tuple(int(c) for c in a.channels.split(',')), n_res=a.n_res, bs=a.bs, precision='bf16')
    settings = {'recipe': lambda: recipe(cfg, a.steps), 'bare': lambda: bare(cfg, a.steps),
                'bf16 weights': lambda: bare(cfg, a.steps, bf16_weights=True)}
    wall, cpu = {k: [] for k in settings}, {k: [] for k in settings}
    for r in range(a.rounds):
        for k, f in settings.items():
            w, c = f()
            wall[k].append(statistics.median(w[2:])); cpu[k].append(statistics.median(c[2:]))
        print(f"round {r + 1}: " + '  '.join(f"{k} {1e3 * wall[k][-1]:.0f} ms wall / {1e3 * cpu[k][-1]:.0f} ms CPU" for k in settings), flush=True)
    print(f"\nU-Net {cfg.channels} n_res={cfg.n_res}, batch {cfg.bs}, {a.threads} threads, medians over {a.rounds} rounds")
    print("| setting | ms/step wall | ms/step CPU | recipe's time / this (CPU) |\n|---|---|---|---|")
    for k in settings:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        print(f"| {k} | {1e3 * w:.0f} | {1e3 * c:.0f} | {statistics.median(cpu['recipe']) / c:.2f}x |")


if __name__ == '__main__': main()
