"""CPU-budget sweep: which recipe gives the best FID for a fixed training time on this machine.

    python bench/budget_sweep.py --root ~/ddpm-runs/sweep --measure     # 1. step times, alone on the machine
    python bench/budget_sweep.py --root ~/ddpm-runs/sweep --work         # 2. train + score (run one or two at once)
    python bench/budget_sweep.py --root ~/ddpm-runs/sweep --report bench/results/budget_sweep.json

A budget is minutes of training on this 2-core machine with both cores (`ddpm_train --minutes`). Runs are sized by
step count, not by the clock: `--measure` times every setting not yet timed with `train.measure_step_seconds` (2 threads, nothing else
running) and a run of B minutes trains `B * 60 / seconds-per-step` steps. So the workers may share the machine (each
uses one thread) without changing what is measured. Every run trains with `train.train_ddpm` (the command line's path:
bf16 autocast where native, warm-up + cosine lr, EMA, checkpoints, so a killed worker resumes where it stopped) on all
60,000 training images, then is scored by FID against the test split with 512 DDIM-50 samples (seed 0) of its EMA
weights, beside the 512-image real-data floor. Finished runs are skipped, so `--work` can be started again at any time.
"""
import argparse, json, os, time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ddpm_from_scratch.train import TrainConfig, build_schedule, load_model, measure_step_seconds, train_ddpm
from ddpm_from_scratch.ddim import generate
from ddpm_from_scratch.unet import fashion_unet
from ddpm_from_scratch.experiments import load_bench_model, train_diffusers
from ddpm_from_scratch.fid import evaluate

SIZES = {  # the from-scratch U-Net at three sizes, and a diffusers UNet2DModel as the baseline
    'S': dict(channels=(16, 32, 64), n_res=1),
    'M': dict(channels=(32, 64, 128), n_res=1),
    'M2': dict(channels=(32, 64, 128), n_res=2),
    'L': dict(channels=(32, 64, 128), n_res=2, attn_res=(8,)),  # the shipped reference model's network
    'diffusers': dict(channels=(16, 32, 64)),  # its own widths below; TrainConfig's are unused
}
DIFFUSERS = dict(channels=(16, 32, 64), attention=False, layers_per_block=1)
BASE = dict(n_train=0, bs=128, lr=3e-3, warmup=0.05, ema=0.999, schedule='linear', n_steps=1000, precision='auto', seed=0)  # pinned: the sweep must not follow the defaults it chose

VARIANTS = {'lr1e-3': dict(lr=1e-3), 'lr6e-3': dict(lr=6e-3), 'bs64': dict(bs=64), 'ema0.995': dict(ema=0.995), 'cosine': dict(schedule='cosine')}

def runs():
    "The sweep, most important first (a sweep cut short still answers the main question): (name, size, minutes, changes)."
    out = [(f'{s}-9', s, 9, {}) for s in ('M2', 'M', 'S', 'diffusers')] + [(f'{s}-2', s, 2, {}) for s in ('M2', 'M', 'S')]
    out += [(f'M-2-{k}', 'M', 2, v) for k, v in VARIANTS.items()]           # the recipe's knobs, one at a time, at 2 minutes
    out += [(f'M-9-{k}', 'M', 9, VARIANTS[k]) for k in ('bs64', 'cosine')]  # the promising ones at the main job's budget
    out += [('M-9-bs64-cosine', 'M', 9, {**VARIANTS['bs64'], **VARIANTS['cosine']})]  # and both together
    out += [(f'{s}-9-bs64-cosine', s, 9, {**VARIANTS['bs64'], **VARIANTS['cosine']}) for s in ('diffusers', 'M2')]  # scored well, the deeper nets led
    out += [('L-9', 'L', 9, {}), ('L-2', 'L', 2, {})]
    return out + [(f'{s}-5', s, 5, {}) for s in ('M2', 'M', 'S', 'L')]

def config(size, changes, steps=0):
    return TrainConfig(**{**BASE, **SIZES[size], **changes, 'total_steps': steps})

def speed_key(size, changes): return f"{size}-bs{changes.get('bs', BASE['bs'])}"

def measure(root):
    "Seconds per optimiser step of every (size, batch size) in the sweep not yet in speeds.json, with 2 threads."
    torch.set_num_threads(2)
    f = root / 'speeds.json'
    speeds = json.loads(f.read_text()) if f.exists() else {}
    for _, size, _, ch in runs():
        k = speed_key(size, ch)
        if k in speeds: continue
        cfg = config(size, ch)
        model = fashion_unet(**DIFFUSERS) if size == 'diffusers' else None
        speeds[k] = measure_step_seconds(cfg, model, device='cpu', n=10)
        print(f"{k}: {speeds[k]:.3f} s/step", flush=True)
        f.write_text(json.dumps(speeds, indent=1))

def claim(path):
    "Take a run for this worker (atomic: several workers may look at once)."
    try: os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)); return True
    except FileExistsError: return False

def work(root, threads):
    torch.set_num_threads(threads)
    speeds = json.loads((root / 'speeds.json').read_text())
    for name, size, minutes, ch in runs():
        d = root / name
        if (d / 'result.json').exists() or not claim(root / f'{name}.claim'): continue
        try:
            steps = int(minutes * 60 / speeds[speed_key(size, ch)])
            cfg = config(size, ch, steps)
            t0, c0 = time.time(), time.process_time()
            print(f"{name}: {steps} steps", flush=True)
            if size == 'diffusers':
                if not (d / 'checkpoint.pt').exists(): train_diffusers(cfg, d, DIFFUSERS, device='cpu')
                model = load_bench_model(d).model
            else:
                ckpt = train_ddpm(cfg, d, resume=True, device='cpu', progress=False, n_samples=0, ckpt_minutes=3)
                model = load_model(ckpt)[0]
            train_s, train_cpu = time.time() - t0, time.process_time() - c0
            t1 = time.time()
            imgs = generate(model, build_schedule(cfg), 512, 'ddim', seed=0, bs=128, device='cpu', progress=False, steps=50)
            r = evaluate(imgs, device='cpu')
            res = dict(name=name, size=size, minutes=minutes, steps=steps, changes=ch, config=asdict(cfg),
                       params=sum(p.numel() for p in model.parameters()), step_s=speeds[speed_key(size, ch)],
                       train_wall_s=train_s, train_cpu_s=train_cpu, sample_wall_s=time.time() - t1, threads=threads, **r)
            (d / 'result.json').write_text(json.dumps(res, indent=1))
            print(f"{name}: FID {r['fid']:.2f} (floor {r['floor_fid']:.2f})", flush=True)
        finally: (root / f'{name}.claim').unlink(missing_ok=True)

def report(root, out):
    res = [json.loads(p.read_text()) for p in sorted(root.glob('*/result.json'))]
    for r in sorted(res, key=lambda r: (r['minutes'], r['fid'])):
        print(f"{r['name']:>14} {r['params']:>9,} params {r['steps']:>5} steps  FID {r['fid']:6.2f}  "
              f"({r['fid'] / r['floor_fid']:.1f}x floor {r['floor_fid']:.2f})")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(dict(speeds=json.loads((root / 'speeds.json').read_text()), runs=res), indent=1))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', type=Path, default=Path('~/ddpm-runs/sweep').expanduser())
    p.add_argument('--measure', action='store_true'); p.add_argument('--work', action='store_true')
    p.add_argument('--threads', type=int, default=1); p.add_argument('--report', nargs='?', const='', default=None)
    a = p.parse_args()
    a.root.mkdir(parents=True, exist_ok=True)
    if a.measure: measure(a.root)
    if a.work: work(a.root, a.threads)
    if a.report is not None: report(a.root, a.report)
