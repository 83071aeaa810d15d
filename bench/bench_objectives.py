"""What the network predicts and how the loss weighs each noise level, side by side at the 9-minute budget.

Each variant of the recipe (`--variants`) is trained for `--steps` optimiser steps (the step count the
9-minute main job reaches on the machine; fixed, so that runs sharing the machine stay comparable) with each
seed, then scored by FID against the test split with the command line's default sampler. Several workers may
share `--root` (one thread each); each claims a run, trains it (resumably: rerun the same command after an
interruption) and writes `parts/VARIANT-sSEED.json`. `--gather` writes the table to `--json`.

`--phema VARIANT-sSEED` then scores the run's post-hoc EMA lengths (FID of `--phema_n` samples against the
training split, sample seed 1) beside its fixed-decay EMA on the same samples, writes the best length as a
checkpoint and scores it like the runs (test split, `--n` samples, seed 0). `--figure PNG` draws 8 samples of
each variant's seed-0 run from the same noise, one row per variant.

Run: `python bench/bench_objectives.py --root RUNS --steps 1600 --threads 1 &` twice, then
`python bench/bench_objectives.py --root RUNS --phema v-minsnr-s0`, and
`python bench/bench_objectives.py --root RUNS --gather --json bench/results/objectives.json --figure nbs/images/objectives.png`."""
import argparse, json, os, statistics, time
from dataclasses import asdict, replace
from pathlib import Path
import torch
from ddpm_from_scratch.ddim import generate
from ddpm_from_scratch.experiments import claim_part, hardware
from ddpm_from_scratch.fid import ImageEval, evaluate
from ddpm_from_scratch.ode import SampleConfig
from ddpm_from_scratch.train import (TrainConfig, build_schedule, choose_phema, load_checkpoint, load_model, save_grid,
                                     train_ddpm)

VARIANTS = {'eps': dict(pred='eps', weighting='uniform'),            # today's recipe
            'v-minsnr': dict(pred='v', weighting='min_snr'),
            'eps-minsnr': dict(pred='eps', weighting='min_snr')}

def score(ckpt, n:int, seed:int=0)->dict:
    "FID/KID of `n` samples drawn with the default sampler, against the test split."
    model, cfg = load_model(ckpt)
    s = SampleConfig()
    t0 = time.process_time()
    imgs = generate(model, build_schedule(cfg), n, s.sampler, seed=seed, progress=False, **s.options())
    r = evaluate(imgs, n_real=0)
    return dict(fid=r['fid'], kid=r['kid'], n=n, sample_seed=seed, sampler=s.sampler, sample_steps=s.steps,
                options=s.options(), sample_cpu_seconds=time.process_time() - t0)

def run(root:Path, variant:str, seed:int, steps:int, n:int, phema_every:int):
    name = f'{variant}-s{seed}'
    part = root / 'parts' / f'{name}.json'
    if part.exists() or not claim_part(part): return
    cfg = replace(TrainConfig(seed=seed, total_steps=steps, phema_every=phema_every), **VARIANTS[variant])
    out = root / name
    print(f'{time.strftime("%H:%M:%S")} training {name}', flush=True)
    ck = train_ddpm(cfg, out, resume=(out / 'checkpoint.pt').exists(), progress=False, n_samples=0)
    c = load_checkpoint(ck)
    print(f'{time.strftime("%H:%M:%S")} scoring {name}', flush=True)
    res = dict(variant=variant, seed=seed, config=asdict(cfg), train_steps=c['step'], train_cpu_seconds=c['cpu_seconds'],
               final_loss=c['history'][-1], ckpt=str(ck.relative_to(root)), **score(ck, n))
    part.write_text(json.dumps(res, indent=1))
    print(f'{time.strftime("%H:%M:%S")} {name}: FID {res["fid"]:.2f}', flush=True)

SIGMA_RELS = (0.02, 0.03, 0.05, 0.08, 0.1, 0.13, 0.18, 0.25)

def phema(root:Path, name:str, n_choose:int, n:int):
    "Post-hoc EMA lengths of run `name` against its fixed-decay EMA, on the same samples; the best scored like the runs."
    s, ev = SampleConfig(), ImageEval.fashion_mnist('train')
    print(f'{time.strftime("%H:%M:%S")} post-hoc EMA of {name}', flush=True)
    r = choose_phema(root / name, SIGMA_RELS, s.sampler, n=n_choose, seed=1, evaluator=ev, progress=True, **s.options())
    model, cfg = load_model(root / name)
    fixed = ev.fid(generate(model, build_schedule(cfg), n_choose, s.sampler, seed=1, progress=False, **s.options()))
    best = score(r['path'], n)
    res = dict(run=name, n_choose=n_choose, choose_seed=1, choose_against='train', fids={str(k): v for k, v in r['fids'].items()},
               fixed_ema=cfg.ema, fixed_ema_fid=fixed, best=r['best'], best_test=best)
    (root / 'parts' / f'phema-{name}.json').write_text(json.dumps(res, indent=1))
    print(f"{name}: best sigma_rel {r['best']} (FID {r['fids'][r['best']]:.2f} vs fixed EMA {fixed:.2f}); "
          f"at N={n} on the test split {best['fid']:.2f}", flush=True)

def figure(root:Path, png:str):
    "8 samples of each variant's seed-0 run, from the same noise: one row per variant."
    rows, labels, s = [], [], SampleConfig()
    for v in VARIANTS:
        if not (root / f'{v}-s0' / 'checkpoint.pt').exists(): continue
        model, cfg = load_model(root / f'{v}-s0')
        rows.append(generate(model, build_schedule(cfg), 8, s.sampler, seed=0, progress=False, **s.options())); labels.append(v)
    save_grid(torch.cat(rows), png, ncols=8, row_labels=labels)

def gather(root:Path)->dict:
    rows = [json.loads(p.read_text()) for p in sorted((root / 'parts').glob('*.json')) if not p.name.startswith('phema-')]
    ph = [json.loads(p.read_text()) for p in sorted((root / 'parts').glob('phema-*.json'))]
    summary = {}
    for v in VARIANTS:
        f = [r['fid'] for r in rows if r['variant'] == v]
        if f: summary[v] = dict(seeds=len(f), fid_mean=statistics.mean(f), fid_min=min(f), fid_max=max(f),
                               train_cpu_seconds_mean=statistics.mean(r['train_cpu_seconds'] for r in rows if r['variant'] == v))
    return dict(variants=VARIANTS, rows=rows, summary=summary, phema=ph, hardware=hardware(torch.device('cpu')))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', required=True, help='folder for the runs (outside the work tree)')
    ap.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated, from ' + ', '.join(VARIANTS))
    ap.add_argument('--seeds', default='0,1,2', help='training seeds')
    ap.add_argument('--steps', type=int, default=1600, help='optimiser steps per run')
    ap.add_argument('--n', type=int, default=2048, help='samples per FID')
    ap.add_argument('--phema_every', type=int, default=100, help='post-hoc EMA snapshots every this many steps')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads of this worker')
    ap.add_argument('--gather', action='store_true', help='only collect the finished runs into --json')
    ap.add_argument('--json', default=None, help='write the table here')
    ap.add_argument('--phema', default=None, help='score the post-hoc EMA of this run (VARIANT-sSEED)')
    ap.add_argument('--phema_n', type=int, default=512, help='samples per post-hoc EMA length')
    ap.add_argument('--figure', default=None, help='draw the seed-0 samples of each variant into this image')
    a = ap.parse_args()
    root = Path(a.root)
    torch.set_num_threads(a.threads)
    if a.phema: phema(root, a.phema, a.phema_n, a.n)
    elif not a.gather:
        variants, seeds = a.variants.split(','), [int(s) for s in a.seeds.split(',')]
        for v in variants:
            if v not in VARIANTS: raise SystemExit(f'unknown variant {v!r}: use {", ".join(VARIANTS)}')
        for seed in seeds:  # one seed of every variant before the next seed: a cut-short bench stays balanced
            for v in variants: run(root, v, seed, a.steps, a.n, a.phema_every)
    res = gather(root)
    for v, s in res['summary'].items():
        print(f"{v:11s} {s['seeds']} seeds: FID mean {s['fid_mean']:.2f} (min {s['fid_min']:.2f}, max {s['fid_max']:.2f})")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')
    if a.figure: figure(root, a.figure)
