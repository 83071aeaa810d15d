"""Training speed and loss of the command line's recipe (`train.fit_recipe`) in each precision, measured in one run.

    python bench/bench_precision.py [--channels 16,32,64] [--n_res 1] [--attn_res ''] [--bs 128] [--rounds 3]
                                    [--steps 12] [--precisions fp32,auto] [--loss_steps 150] [--seeds 0,1]

1. Speed: for each round, each precision trains a fresh model for `--steps` optimiser steps through `fit_recipe` (the
   path `ddpm_train` takes: DDPMCB, the precision callback, EMA, warm-up + cosine lr); the settings alternate within
   every round, so a change in a shared machine's load hits them all. Per step it records wall time and the
   process's CPU time (steadier on a busy machine), skipping the first two steps; per round it takes the median,
   and reports the median over rounds and the ratio to the first precision (above 1: faster).
2. Loss: with `--loss_steps` > 0, each precision trains `--loss_steps` steps for each seed, and the mean training loss
   of the last 30 steps is compared: the gap between precisions against the spread between seeds of one precision.
3. With `--json FILE`, both go to FILE (the speed table, and every run's loss per step), which notebook 11 plots.
"""
import argparse, json, platform, statistics, time
from pathlib import Path
from dataclasses import replace

import torch

from ddpm_from_scratch.mixed import StepTimerCB
from ddpm_from_scratch.train import TrainConfig, fit_recipe
from ddpm_from_scratch.learner import Callback
from ddpm_from_scratch.mixed import resolve_precision


class StepClock(StepTimerCB):
    "`StepTimerCB` plus the CPU time of the process between optimiser steps, and the training losses."
    def before_fit(self, learn): super().before_fit(learn); self.cpu, self.c, self.losses = [], None, []
    def after_step(self, learn):
        super().after_step(learn)
        now = time.process_time()
        if self.c is not None: self.cpu.append(now - self.c)
        self.c = now
        self.losses.append(learn.loss.item())


class Contiguous(Callback):
    "Undo `fit_recipe`'s channels-last weights: float32 as `ddpm_train` ran it before `--precision` existed."
    order = -100
    def before_fit(self, learn): learn.model.to(memory_format=torch.contiguous_format)


def run(cfg, steps, seed=0, contiguous=False):
    clock = StepClock()
    fit_recipe(replace(cfg, total_steps=steps, seed=seed), device='cpu', cbs=[clock] + ([Contiguous()] if contiguous else []))
    return clock


def setting(q):
    "'fp32-nchw' is float32 without channels-last (the old default); anything else is a `precision`."
    return ('fp32', True) if q == 'fp32-nchw' else (q, False)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--channels', default='16,32,64'); p.add_argument('--n_res', type=int, default=1)
    p.add_argument('--attn_res', default=''); p.add_argument('--bs', type=int, default=128)
    p.add_argument('--rounds', type=int, default=3); p.add_argument('--steps', type=int, default=12)
    p.add_argument('--precisions', default='fp32,auto', help="comma-separated: auto, fp32, bf16, fp16, or fp32-nchw (fp32 without channels-last, the old default)"); p.add_argument('--loss_steps', type=int, default=150)
    p.add_argument('--seeds', default='0,1'); p.add_argument('--threads', type=int, default=None)
    p.add_argument('--json', default=None, help='write the speed table and the loss curves to this file')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    ints = lambda s: tuple(int(o) for o in s.split(',') if o)
    cfg = TrainConfig(channels=ints(a.channels), n_res=a.n_res, attn_res=ints(a.attn_res), bs=a.bs, n_train=0, ema=0.999)
    precs = a.precisions.split(',')
    print(f"U-Net {cfg.channels} n_res={cfg.n_res} attn_res={cfg.attn_res}, batch {cfg.bs}, {torch.get_num_threads()} threads; "
          + ', '.join(f"{q} -> {resolve_precision(setting(q)[0], 'cpu')[0]}" for q in precs))
    wall, cpu = {q: [] for q in precs}, {q: [] for q in precs}
    for r in range(a.rounds):
        for q in precs:
            c = run(replace(cfg, precision=setting(q)[0]), a.steps + 1, contiguous=setting(q)[1])
            wall[q].append(statistics.median(c.times[2:])); cpu[q].append(statistics.median(c.cpu[2:]))
        print(f"round {r + 1}: " + '  '.join(f"{q} {1e3 * wall[q][-1]:.0f} ms wall / {1e3 * cpu[q][-1]:.0f} ms CPU" for q in precs), flush=True)
    base = precs[0]
    out = dict(command='python bench/bench_precision.py ' + ' '.join(f'--{k} {v}' for k, v in vars(a).items() if v not in (None, '') and k != 'json'),
               network=dict(channels=cfg.channels, n_res=cfg.n_res, attn_res=cfg.attn_res, bs=cfg.bs),
               hardware=f"{platform.machine()}, {torch.get_num_threads()} threads", speed=[], losses={})
    print(f"\n| precision | ms/step wall | ms/step CPU | steps/s (wall) | speed-up vs {base} (wall) | speed-up (CPU time) |\n|---|---|---|---|---|---|")
    for q in precs:
        w, c = statistics.median(wall[q]), statistics.median(cpu[q])
        rw = statistics.median([b / x for b, x in zip(wall[base], wall[q])]); rc = statistics.median([b / x for b, x in zip(cpu[base], cpu[q])])
        print(f"| {q} ({resolve_precision(setting(q)[0], 'cpu')[0]}) | {1e3 * w:.0f} | {1e3 * c:.0f} | {1 / w:.2f} | {rw:.2f}x | {rc:.2f}x |")
        out['speed'].append(dict(precision=q, ran=resolve_precision(setting(q)[0], 'cpu')[0], ms_wall=1e3 * w, ms_cpu=1e3 * c,
                                 speedup_wall=rw, speedup_cpu=rc))
    if a.loss_steps > 0:
        print(f"\nmean training loss of steps {a.loss_steps - 29}-{a.loss_steps}, per seed:")
        curves = {q: {s: run(replace(cfg, precision=setting(q)[0]), a.loss_steps, s, setting(q)[1]).losses for s in ints(a.seeds)}
                  for q in precs}
        out['losses'] = {q: {str(s): [round(o, 5) for o in v] for s, v in c.items()} for q, c in curves.items()}
        res = {q: [statistics.mean(v[-30:]) for v in c.values()] for q, c in curves.items()}
        for q, v in res.items(): print(f"  {q:5s} " + '  '.join(f"{o:.4f}" for o in v) + f"   mean {statistics.mean(v):.4f}")
        spread = max(max(v) - min(v) for v in res.values())
        gap = max(res[q][i] for q in precs for i in range(len(res[q]))) - min(res[q][i] for q in precs for i in range(len(res[q])))
        means = [statistics.mean(v) for v in res.values()]
        print(f"  gap between precisions' means {max(means) - min(means):.4f}; largest spread between seeds {spread:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
        print(f'wrote {a.json}')


if __name__ == '__main__': main()
