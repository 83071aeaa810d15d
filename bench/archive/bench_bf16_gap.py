"""Why bfloat16 autocast stays short of 2x on this CPU: three ways a bfloat16 training step could be faster, timed beside
the command line's own step, alternated within each round; and, with `--layers`, the network's commonest layers alone.

    python bench/archive/bench_bf16_gap.py [--channels 32,64,128] [--n_res 2] [--bs 64] [--rounds 3] [--steps 10] [--threads 2]
    python bench/archive/bench_bf16_gap.py --layers [--bs 64] [--rounds 5] [--threads 2]
    python bench/archive/bench_bf16_gap.py --ops [--channels 32,64,128] [--n_res 2] [--bs 64] [--rounds 2] [--steps 10]

- 'recipe': `train.fit_recipe` with `precision='bf16'` (callbacks, EMA, lr schedule, data loading): what `ddpm_train`
  runs here;
- 'bare': the same network and batch size in a bare loop (noise, forward under autocast, MSE, backward, Adam) with no
  callbacks, no EMA and the batch already in memory: what is left once the training loop's overhead is gone;
- 'bf16 weights': the bare loop with the network cast to bfloat16 and no autocast, so nothing is cast on the way;
- 'bf16 channels-last': the bare loop with the network's weights and input in channels-last, the layout oneDNN's
  convolutions prefer (with contiguous tensors, every convolution converts its input and output to a blocked layout).
Each setting trains a fresh network for `--steps` steps per round; the median step (skipping the first two) is taken
per round, then the median over rounds, wall time and the process's CPU time.

`--layers` times one layer at a time, forward and backward, at the shape where the default network spends most of its
time (32 channels at 32x32, `--bs` images): a 3x3 convolution, a GroupNorm (8 groups) and a SiLU, each in float32 and
bfloat16, with contiguous and with channels-last tensors. CPU time per call, median of `--steps` calls per round, then
median over rounds; the four layouts alternate within each round.

`--ops` runs `fit_recipe` in fp32 (channels-last, as `ddpm_train --precision fp32` does) and in bf16 under
`torch.profiler`, alternated for `--rounds` rounds, and lists the operations by their time per step in each (the
profiler's self time on the main thread, the smallest over rounds), grouped by operation and first input's shape: where
bfloat16 gains, and where it does not.
"""
import argparse, collections, statistics, time
from dataclasses import replace

import torch
import torch.nn.functional as F

from ddpm_from_scratch.train import TrainConfig, build_model, fit_recipe
from ddpm_from_scratch.learner import Callback

from pathlib import Path
import sys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the live scripts it builds on
from bench_precision import StepClock  # a live script in bench/


def bare(cfg, steps, bf16_weights=False, channels_last=False):
    "Wall and CPU seconds of each step of the bare loop."
    torch.manual_seed(0)
    model = build_model(cfg)
    if bf16_weights: model = model.to(torch.bfloat16)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5)
    x, wall, cpu = torch.randn(cfg.bs, 1, 32, 32).contiguous(memory_format=fmt), [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        t, eps = torch.randint(0, cfg.n_steps, (cfg.bs,)), torch.randn_like(x)
        xt = (x + eps).to(torch.bfloat16) if bf16_weights else x + eps
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=not bf16_weights):
            loss = F.mse_loss(model(xt, t).float(), eps)
        loss.backward(); opt.step(); opt.zero_grad()
        wall.append(time.perf_counter() - w); cpu.append(time.process_time() - c)
    return wall, cpu


LAYERS = {'conv 3x3': lambda c: torch.nn.Conv2d(c, c, 3, padding=1), 'GroupNorm': lambda c: torch.nn.GroupNorm(8, c),
          'SiLU': lambda c: torch.nn.SiLU()}
LAYOUTS = ('fp32', 'fp32 channels-last', 'bf16', 'bf16 channels-last')


def layer_time(layer, x, layout):
    "CPU seconds of one forward and backward of `layer` on `x` in `layout` (one of LAYOUTS), bfloat16 through autocast."
    fmt = torch.channels_last if 'channels-last' in layout else torch.contiguous_format
    x, layer = x.contiguous(memory_format=fmt), layer.to(memory_format=fmt)
    if layout.startswith('bf16'): x = x.to(torch.bfloat16)   # as a bf16 activation arrives from the layer before
    x.requires_grad_(True)
    c = time.process_time()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=layout.startswith('bf16')): y = layer(x)
    y.backward(torch.ones_like(y))
    return time.process_time() - c


def layers(bs=64, c=32, size=32, rounds=5, steps=10):
    "{layer: {layout: median CPU ms per forward+backward}} (see `--layers`)."
    x, res = torch.randn(bs, c, size, size), {k: {l: [] for l in LAYOUTS} for k in LAYERS}
    for _ in range(rounds):
        for k, make in LAYERS.items():
            layer = make(c)
            for l in LAYOUTS: res[k][l].append(statistics.median([layer_time(layer, x, l) for _ in range(steps)]))
    return {k: {l: 1e3 * statistics.median(v) for l, v in d.items()} for k, d in res.items()}


def layers_table(res):
    "A markdown table of `layers`' result: ms per call, and float32 channels-last's time over each layout's."
    out = ["| layer | " + ' | '.join(f"{l} ms" for l in LAYOUTS) + " | fp32 channels-last / bf16 | fp32 channels-last / bf16 channels-last |",
           '|---' * (len(LAYOUTS) + 3) + '|']
    for k, d in res.items():
        base = d['fp32 channels-last']
        out.append(f"| {k} | " + ' | '.join(f"{d[l]:.2f}" for l in LAYOUTS) + f" | {base / d['bf16']:.2f}x | {base / d['bf16 channels-last']:.2f}x |")
    return '\n'.join(out)


class ProfileCB(Callback):
    "Profile every optimiser step after the first `skip`; `ms` then maps (operation, first input's shape) to ms per step."
    def __init__(self, skip=2): self.skip, self.n, self.prof = skip, 0, None
    def after_step(self, learn):
        self.n += 1
        if self.n == self.skip:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self.prof.__enter__()
    def after_fit(self, learn):
        if self.prof is None: return
        self.prof.__exit__(None, None, None)
        steps, self.ms = self.n - self.skip, collections.Counter()
        for e in self.prof.key_averages(group_by_input_shape=True):
            shape = next((tuple(s) for s in e.input_shapes or () if s), ())
            self.ms[(e.key, shape)] += e.self_cpu_time_total / 1e3 / steps


def ops(cfg, steps, rounds=2, precisions=('fp32', 'bf16')):
    "{precision: Counter((op, shape) -> ms per step)}, each the smallest over `rounds` alternated rounds of `fit_recipe`."
    res = {q: [] for q in precisions}
    for _ in range(rounds):
        for q in precisions:
            cb = ProfileCB()
            fit_recipe(replace(cfg, precision=q, total_steps=steps + cb.skip + 1), device='cpu', cbs=[cb])
            res[q].append(cb.ms)
    keys = set().union(*(d for v in res.values() for d in v))
    return {q: collections.Counter({k: min(d.get(k, 0.) for d in v) for k in keys}) for q, v in res.items()}


def ops_table(res, rows=20, base='fp32', to='bf16'):
    "The `rows` operations with the most time in `to`, with `base`'s time, the ratio and the share of `to`'s step."
    tb, tt = sum(res[base].values()), sum(res[to].values())
    out = [f"all operations: {tb:.0f} ms per step in {base}, {tt:.0f} in {to}: {tb / tt:.2f}x",
           f"| operation | first input | {base} ms | {to} ms | {base} / {to} | share of {to} |", '|---|---|---|---|---|---|']
    for (op, shape), t in res[to].most_common(rows):
        b = res[base].get((op, shape), 0.)
        out.append(f"| {op} | {'x'.join(map(str, shape)) or '-'} | {b:.1f} | {t:.1f} | "
                   + (f"{b / t:.2f}x" if t > 0 and b > 0 else '-') + f" | {100 * t / tt:.0f}% |")
    return '\n'.join(out)


def recipe(cfg, steps):
    clock = StepClock()
    fit_recipe(replace(cfg, total_steps=steps + 1), device='cpu', cbs=[clock])
    return clock.times, clock.cpu


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--channels', default='32,64,128'); p.add_argument('--n_res', type=int, default=2)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--layers', action='store_true', help="time single layers (conv, GroupNorm, SiLU) in each precision and layout")
    p.add_argument('--ops', action='store_true', help="profile fit_recipe's step in fp32 and bf16, operation by operation")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.layers:
        print(f"32 channels at 32x32, batch {a.bs}, {a.threads} threads; CPU ms per forward+backward, medians over {a.rounds} rounds")
        print(layers_table(layers(a.bs, rounds=a.rounds, steps=a.steps)))
        return
    cfg = TrainConfig(channels=tuple(int(c) for c in a.channels.split(',')), n_res=a.n_res, bs=a.bs, precision='bf16')
    if a.ops:
        print(f"U-Net {cfg.channels} n_res={cfg.n_res}, batch {cfg.bs}, {a.threads} threads, {a.steps} profiled steps, "
              f"smallest of {a.rounds} rounds")
        print(ops_table(ops(cfg, a.steps, a.rounds)))
        return
    settings = {'recipe': lambda: recipe(cfg, a.steps), 'bare': lambda: bare(cfg, a.steps),
                'bf16 weights': lambda: bare(cfg, a.steps, bf16_weights=True),
                'bf16 channels-last': lambda: bare(cfg, a.steps, channels_last=True)}
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
