"""Turn a finished `ddpm_train` run into a shipped reference model, and measure it.

    python bench/make_pretrained.py --run ~/ddpm-runs/v2 --name ddpm_fashion_v2 [--n 512] \\
        [--rows ddim100-eta1-clip0,ddim50-eta1-clip0,ddim25-eta1-clip0,ddim50] [--guidance 50] [--minutes 40]

1. Reads the run's checkpoint (`ddpm_train --out RUN ...`, every step done; or the post-hoc EMA checkpoint that
   `train.choose_phema` wrote beside it, whose averaged weights then ship) and writes
   `ddpm_from_scratch/assets/NAME.pt`: the same checkpoint format with the EMA weights in float16 and no optimiser
   state, so `train.load_model` (and, for the version `train.PRETRAINED` names, `ddpm_sample --ckpt pretrained`) loads
   it like any checkpoint.
2. Loads it back exactly as a user would and measures it with the library's own harnesses: `experiments.bench_samplers`
   (FID/KID and seconds per sampler row, against the real-data floor at the same N; the rows in the order given, so
   the ones that matter most go first) and `guidance.guidance_eval` (the shipped classifier's accuracy on the
   asked-for class at w = 0, 1, 3). `--minutes` bounds the row benchmark: rows not started by then are left out.
3. Writes the facts and scores to NAME.json beside it: the `ddpm_train` command that reproduces the run, its steps,
   CPU-hours (from the checkpoint), hardware and the scores.
"""
import argparse, hashlib, json, platform, time
from dataclasses import asdict, fields
from pathlib import Path

from ddpm_from_scratch.train import TrainConfig, load_checkpoint, load_model, save_checkpoint
from ddpm_from_scratch.data import assets_path
from ddpm_from_scratch.experiments import bench_samplers, bench_table, load_bench_model
from ddpm_from_scratch.guidance import guidance_eval, guidance_table
from ddpm_from_scratch.fid import ImageEval


def train_command(cfg:TrainConfig, out:str)->str:
    "The `ddpm_train` command line that trains `cfg` (the flags that differ from the defaults)."
    d, flags = TrainConfig(), []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ('total_steps', 'epochs') or v == getattr(d, f.name): continue
        flags.append(f"--{f.name} {','.join(map(str, v)) if isinstance(v, tuple) else v}")
    steps = f"--epochs {cfg.epochs}" if cfg.run_steps() == cfg.epochs * cfg.batches_per_epoch() else f"(total_steps {cfg.total_steps}: set by --minutes)"
    return ' '.join(['ddpm_train --out', out, *flags, steps])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', required=True, help="ddpm_train's output folder (or its checkpoint.pt)")
    p.add_argument('--name', required=True, help="the asset's name, e.g. ddpm_fashion_v2")
    p.add_argument('--n', type=int, default=512)
    p.add_argument('--rows', default='ddim100-eta1-clip0,ddim50-eta1-clip0,ddim25-eta1-clip0,ddim50')
    p.add_argument('--guidance', type=int, default=50, help='images per class for the guidance table (0: skip it)')
    p.add_argument('--minutes', type=float, default=None, help='start no sampler row after this many minutes')
    p.add_argument('--cpu_hours', type=float, default=None,
                   help="the run's CPU time, for a checkpoint written before checkpoints recorded it (say how it was measured in --note)")
    p.add_argument('--note', default=None, help='a line for the JSON, e.g. how --cpu_hours was measured')
    a = p.parse_args()
    run = Path(a.run).expanduser()
    ck = load_checkpoint(run)
    folder = run if run.is_dir() else run.parent   # a post-hoc EMA checkpoint sits beside the run's checkpoint.pt
    cfg = TrainConfig.from_dict(ck['config'])
    if ck['step'] != cfg.run_steps(): raise SystemExit(f"the run is at step {ck['step']} of {cfg.run_steps()}: not finished")
    if not cfg.n_classes: raise SystemExit("the reference model is class-conditional (ddpm_train --n_classes 10)")
    out = assets_path(f'{a.name}.pt')
    save_checkpoint(out, config=asdict(cfg), epoch=ck['epoch'], iter=ck['iter'], step=ck['step'],
                    model={k: v.half() for k, v in ck['ema'].items()}, ema=None, history=ck['history'])
    model, cfg2 = load_model(out)   # exactly what a user gets: float16 weights loaded into the float32 network
    assert cfg2 == cfg
    bm = load_bench_model(out, a.name)
    ev = ImageEval.fashion_mnist('test')
    t0 = time.time()
    res = bench_samplers([bm], a.rows, ev, n=a.n, deadline=None if a.minutes is None else t0 + 60 * a.minutes)
    print(bench_table(res))
    info = dict(version=a.name.rsplit('_', 1)[-1], file=out.name, sha256=hashlib.sha256(out.read_bytes()).hexdigest(),
                bytes=out.stat().st_size, params=sum(p.numel() for p in model.parameters()), config=asdict(cfg),
                trained_by=train_command(cfg, folder.name), steps=ck['step'], images_seen=ck['step'] * cfg.bs,
                train_cpu_hours=round(ck['cpu_seconds'] / 3600, 2) if 'cpu_seconds' in ck else a.cpu_hours,
                hardware=f"{platform.processor() or platform.machine()}, 2 cores", final_loss=ck['history'][-1],
                scores=dict(n=a.n, floor=res['floor'], rows=[{k: v for k, v in row.items() if k != 'hardware'} for row in res['rows']],
                            hardware=res['rows'][0]['hardware'] if res['rows'] else None))
    if a.guidance:
        g = guidance_eval(model, bm.schedule, scales=(0., 1., 3.), n_per_class=a.guidance, n_steps=50, evaluator=ev)
        print(guidance_table(g))
        info['guidance'] = dict(n=10 * a.guidance, steps=50, sampler='ddim',
                                rows={k: {m: v for m, v in row.items() if m != 'samples'} for k, row in g.items()})
    if 'phema_sigma_rel' in ck:
        info['weights'] = (f"post-hoc EMA of relative length {ck['phema_sigma_rel']:g} (train.phema_checkpoint), "
                           f"not the fixed-decay EMA of --ema")
        info['phema_sigma_rel'] = ck['phema_sigma_rel']
    if a.note: info['notes'] = [a.note]
    info['eval_seconds'] = round(time.time() - t0)
    out.with_suffix('.json').write_text(json.dumps(info, indent=1, default=float) + '\n')
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json').name}")


if __name__ == '__main__': main()
