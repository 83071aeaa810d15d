"""Turn the reference run into the package's pretrained model, and measure it.

    python bench/make_pretrained.py --run ~/ddpm-runs/ref1/ckpt.pt [--n 512] [--rows ddim100,ddim50,ddim25] [--guidance 50]

1. Reads the checkpoint `bench/train_reference.py` wrote, and writes `ddpm_from_scratch/assets/ddpm_fashion_v1.pt`: a
   `cli` checkpoint whose weights are the EMA weights in float16, with the run's recipe as a `TrainConfig`, so
   `cli.load_pretrained()` and `ddpm_sample --ckpt pretrained` load it like any checkpoint.
2. Loads it back exactly as a user would and measures it with the library's own harnesses (`experiments.bench_samplers`
   for FID/KID and seconds per sampler row, against the real-data floor at the same N; `experiments.guidance_eval`
   for the shipped classifier's accuracy on the asked-for class at w = 0, 1, 3), then writes the facts and the scores
   to `ddpm_fashion_v1.json` beside it.
"""
import argparse, hashlib, json, os, platform, time
from dataclasses import asdict
from pathlib import Path

import torch

import ddpm_from_scratch
from ddpm_from_scratch.cli import PRETRAINED, TrainConfig, load_model, pretrained_path, save_checkpoint
from ddpm_from_scratch.experiments import bench_samplers, bench_table, guidance_eval, guidance_table, load_bench_model
from ddpm_from_scratch.fid import ImageEval


def recipe_config(r:dict)->TrainConfig:
    "The `TrainConfig` that describes `bench/train_reference.py`'s recipe (its random flips aside, noted in the JSON)."
    u = r['unet']
    return TrainConfig(channels=tuple(u['channels']), n_res=u['n_res'], attn_res=tuple(u['attn_res']), n_classes=u['n_classes'],
                       p_uncond=r['p_uncond'], schedule=r['schedule'], n_steps=r['n_steps'], total_steps=r['total_steps'],
                       bs=r['bs'], lr=r['lr'], warmup=r['warmup'] / r['total_steps'], n_train=0, ema=r['ema'],
                       precision=r['precision'], seed=r['seed'])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run', required=True); p.add_argument('--n', type=int, default=512)
    p.add_argument('--rows', default='ddim100,ddim50,ddim25'); p.add_argument('--guidance', type=int, default=50,
                   help='images per class for the guidance table (0: skip it)')
    a = p.parse_args()
    ck = torch.load(Path(a.run).expanduser(), map_location='cpu', weights_only=False)
    r = ck['recipe']
    if ck['step'] != r['total_steps']: raise SystemExit(f"the run is at step {ck['step']} of {r['total_steps']}: not finished")
    cfg = recipe_config(r)
    out = pretrained_path()
    save_checkpoint(out, config=asdict(cfg), epoch=ck['step'] // cfg.batches_per_epoch(), iter=ck['step'] % cfg.batches_per_epoch(),
                    step=ck['step'], model={k: v.half() for k, v in ck['ema'].items()}, ema=None,
                    history=[l for _, l in ck['log']])
    model, cfg2 = load_model('pretrained')   # exactly what a user gets: float16 weights loaded into the float32 network
    assert cfg2 == cfg
    bm = load_bench_model(out, PRETRAINED)
    ev = ImageEval.fashion_mnist('test')
    t0 = time.time()
    res = bench_samplers([bm], a.rows, ev, n=a.n)
    print(bench_table(res))
    info = dict(version=PRETRAINED.rsplit('_', 1)[-1], file=out.name, sha256=hashlib.sha256(out.read_bytes()).hexdigest(),
                bytes=out.stat().st_size, params=sum(p.numel() for p in model.parameters()), config=asdict(cfg),
                trained_by="bench/train_reference.py (its own loop: the recipe below plus random horizontal flips; "
                           "the library's ddpm_train had no class conditioning, bf16 or time budget yet)",
                steps=ck['step'], images_seen=ck['step'] * cfg.bs, train_cpu_hours=round(ck['cpu_seconds'] / 3600, 2),
                hardware=f"{platform.processor() or platform.machine()}, 2 cores shared with other work, nice 19",
                notes=ck.get('notes', []), final_loss=ck['log'][-1][1],
                scores=dict(n=a.n, floor=res['floor'], rows=[{k: v for k, v in row.items() if k != 'hardware'} for row in res['rows']],
                            hardware=res['rows'][0]['hardware'] if res['rows'] else None))
    if a.guidance:
        g = guidance_eval(model, bm.schedule, scales=(0., 1., 3.), n_per_class=a.guidance, n_steps=50, evaluator=ev)
        print(guidance_table(g))
        info['guidance'] = dict(n=10 * a.guidance, steps=50, sampler='ddim',
                                rows={k: {m: v for m, v in row.items() if m != 'samples'} for k, row in g.items()})
    info['eval_seconds'] = round(time.time() - t0)
    out.with_suffix('.json').write_text(json.dumps(info, indent=1, default=float) + '\n')
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json').name}")


if __name__ == '__main__': main()
