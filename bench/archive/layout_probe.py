"""Which part of a U-Net's layout matters at the 9-minute budget? Our `UNet` in layouts closer to diffusers'
`UNet2DModel`, and that network with one part made like ours, trained like `budget_sweep.py`'s runs and scored like
`bench_sampling_settings.py`.

    python bench/archive/layout_probe.py --measure            # seconds per step of each layout, 2 threads, machine idle
    python bench/archive/layout_probe.py --measure --only D,Dense,Dense-ours   # time these (again), side by side
    OMP_NUM_THREADS=1 python bench/archive/layout_probe.py --work NAME   # train one layout (run one per core), then score it
    python bench/archive/layout_probe.py --report --json bench/results/layout_probe.json   # every result, and the speeds

Every run uses the command line's recipe (`TrainConfig()`: batch 64, cosine schedule, lr 3e-3, EMA 0.999, bf16 where
native) and is scored with DDIM-50, eta 1, not clamped, on 2,048 images (and each block of 512). Results go to
ROOT/NAME/result.json. The layouts are options `UNet` (or `fashion_unet`) already has that `TrainConfig` does not
expose, so the probe builds the network itself. M2 and D are budget_sweep.py's `M2-9-bs64-cosine` (2,172 steps) and
`diffusers-9-bs64-cosine` (3,899 steps, FID 3.09), trained by the sweep.

Step counts. The first runs (M2-cat, S3, M2-add, M2-conv) trained `9 * 60 / (s/step)` steps, timed on the idle
machine, where M2 itself timed 0.272 s (1,985 steps, 9% fewer than the sweep's M2 run). One layout's timing drifts
by up to 30% between sessions and even between minutes, so the later runs take a reference run's step count scaled
by speeds timed side by side (`--measure --only ...`: one timing for D-nomid and D-adagn, the medians of three
alternated timings for the rest): D-nomid and D-adagn train `3899 * speed(D) / speed(NAME)` steps (`--steps`),
M2-mid `2172 * speed(M2) / speed(M2-mid)`. Dense
and Dense-ours train D's 3,899 steps outright, to compare with D at equal steps (they time faster than D: 0.173
and 0.175 s per step against 0.223 s); so do Dense-init and D-seed1, whose `train` times in result.json are those of
a rerun that only scored them (the first run crashed after training, on a speed they never had timed).
"""
import argparse, json, time
from dataclasses import fields, replace
from pathlib import Path

import torch

import sys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the live scripts it builds on
from budget_sweep import DIFFUSERS  # a live script in bench/

from ddpm_from_scratch.train import TrainConfig, build_schedule, load_checkpoint, measure_step_seconds, train_ddpm
from ddpm_from_scratch.ddim import generate
from ddpm_from_scratch.unet import default_groups, fashion_unet
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.fid import ImageEval
from ddpm_from_scratch.unet import UNet

LAYOUTS = {  # M2 is the command line's default network; the others change one thing towards diffusers' layout
    'M2': dict(channels=(32, 64, 128), n_res=2),
    'M2-cat': dict(channels=(32, 64, 128), n_res=2, skip='cat'),
    'S3': dict(channels=(16, 32, 64), n_res=3),
    'M2-add': dict(channels=(32, 64, 128), n_res=2, cond='add', skip_scale=False),  # diffusers' resnet: time added, sums not scaled
    'M2-conv': dict(channels=(32, 64, 128), n_res=2, down='conv'),                   # diffusers' downsampling: stride-2 convolution
    'M2-mid': dict(channels=(32, 64, 128), n_res=2, mid=2),                         # diffusers' middle: two more blocks at 8x8
    # diffusers' network as budget_sweep.DIFFUSERS builds it (D: its speed, beside the others'), with one part made like ours
    'D': dict(diffusers={}),
    'D-nomid': dict(diffusers=dict(mid_block_type=None)),                   # no middle block: the bottleneck is the last level alone
    'D-adagn': dict(diffusers=dict(resnet_time_scale_shift='scale_shift')),  # time as adaptive GroupNorm, as in our default
    # our UNet in the dense layout with a middle block (the DDPM paper's, and diffusers'): with all of diffusers' other
    # choices (the same weights as D), and with our blocks (adaptive GroupNorm, rescaled sums, average-pool down)
    'Dense': dict(channels=(16, 32, 64), n_res=1, skip='dense', mid=2, cond='add', skip_scale=False, down='conv'),
    'Dense-ours': dict(channels=(16, 32, 64), n_res=1, skip='dense', mid=2),
    # why Dense trails D: our zero-initialised last convolutions (Dense-init starts like D), or chance (D again, seed 1)
    'Dense-init': dict(channels=(16, 32, 64), n_res=1, skip='dense', mid=2, cond='add', skip_scale=False, down='conv', init='torch'),
    'D-seed1': dict(diffusers={}, seed=1),
}

RESULTS = Path(__file__).parent / 'results'
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
REFERENCES = {'M2': 'M2-9-bs64-cosine', 'D': 'diffusers-9-bs64-cosine'}  # budget_sweep's runs of the probe's starting points

def conv_macs(model)->dict:
    "Multiply-adds of `model`'s convolutions for one 32x32 image, by the resolution they run at: {32: ..., 16: ..., 8: ...}."
    macs, hooks = {}, []
    def count(m, inp, out): macs[out.shape[-1]] = macs.get(out.shape[-1], 0) + out[0].numel() * m.weight[0].numel()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d): hooks.append(m.register_forward_hook(count))
    with torch.no_grad(): model(torch.zeros(1, 1, 32, 32), torch.tensor([500]))
    for h in hooks: h.remove()
    return macs

def build(name):
    kw = {k: v for k, v in LAYOUTS[name].items() if k not in ('seed', 'init')}  # those two are about the run
    if 'diffusers' in kw: return fashion_unet(**DIFFUSERS, **kw['diffusers'])
    model = UNet(attn_res=(), groups=default_groups(kw['channels']), **kw)
    if LAYOUTS[name].get('init') == 'torch':  # PyTorch's default init for every convolution, as diffusers leaves them
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d): m.reset_parameters()
    return model

def train_config(name:str, steps:int, seed:int=None)->TrainConfig:
    "The run's config: the command line's recipe for `steps` steps, with the layout's seed (or `seed`), and the layout itself where `TrainConfig` can name all of it (so the checkpoint rebuilds with `load_model`)."
    kw = LAYOUTS[name]
    named = {k: v for k, v in kw.items() if k in TRAIN_FIELDS} if set(kw) <= TRAIN_FIELDS else {}
    return replace(TrainConfig(), **named, total_steps=steps, seed=kw.get('seed', 0) if seed is None else seed)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=str(Path.home() / 'ddpm-runs' / 'layouts'))
    p.add_argument('--measure', action='store_true'); p.add_argument('--work', default=None)
    p.add_argument('--only', default=None, help="with --measure: time these layouts (comma-separated), even if timed before")
    p.add_argument('--minutes', type=float, default=9.)
    p.add_argument('--steps', type=int, default=None, help="train this many steps instead (e.g. scaled from a reference run's by the speeds)")
    p.add_argument('--seed', type=int, default=None, help="with --work: train with this seed, into the folder NAME-seedS")
    p.add_argument('--report', action='store_true'); p.add_argument('--json', default=None)
    a = p.parse_args()
    root = Path(a.root); root.mkdir(parents=True, exist_ok=True)
    speeds_f = root / 'speeds.json'
    speeds = json.loads(speeds_f.read_text()) if speeds_f.exists() else {}
    if a.measure:
        torch.set_num_threads(2)
        for name in (a.only.split(',') if a.only else LAYOUTS):  # --only: time these again (with D, to scale D's steps)
            if name in speeds and not a.only: continue
            speeds[name] = measure_step_seconds(TrainConfig(), build(name), device='cpu', n=10)
            print(f"{name}: {speeds[name]:.3f} s/step, {sum(q.numel() for q in build(name).parameters()):,} params", flush=True)
            speeds_f.write_text(json.dumps(speeds, indent=1))
    if a.work:
        name = a.work
        d = root / (name if a.seed is None else f'{name}-seed{a.seed}')
        steps = a.steps or int(a.minutes * 60 / speeds[name])
        cfg = train_config(name, steps, a.seed)
        print(f"{name}: {steps} steps", flush=True)
        t0, c0 = time.time(), time.process_time()
        torch.manual_seed(cfg.seed)  # the initial weights (runs before Dense-init and D-seed1 drew them unseeded)
        ck_path = train_ddpm(cfg, d, resume=True, device='cpu', progress=False, n_samples=0, model=build(name), ckpt_minutes=3)
        train = dict(wall=time.time() - t0, cpu=time.process_time() - c0)
        model = build(name); model.load_state_dict(load_checkpoint(ck_path)['ema']); model.eval()
        ev = ImageEval.fashion_mnist('test')
        imgs = generate(model, build_schedule(cfg), 2048, 'ddim', seed=0, progress=False, steps=50, eta=1., clip=False)
        res = dict(name=d.name, seed=cfg.seed, layout={k: list(v) if isinstance(v, tuple) else v for k, v in LAYOUTS[name].items()},
                   params=sum(q.numel() for q in model.parameters()), steps=steps, step_s=speeds.get(name), train=train,
                   fid=ev.scores(imgs)['fid'], chunk_fids=[ev.scores(imgs[i:i + 512])['fid'] for i in range(0, 2048, 512)],
                   floor=ev.scores(fashion_tensors('train')[0][:2048])['fid'])
        (d / 'result.json').write_text(json.dumps(res, indent=1))
        print(f"{name}: FID {res['fid']:.2f} at N=2048 (blocks of 512: {', '.join(f'{f:.2f}' for f in res['chunk_fids'])})", flush=True)

    if a.report:
        out = Path(a.json) if a.json else None
        res = {k: v for k, v in json.loads(out.read_text()).items() if not k.startswith('_')} if out and out.exists() else {}
        res.update({d.name: json.loads((d / 'result.json').read_text()) for d in sorted(root.iterdir()) if (d / 'result.json').exists()})
        sweep = {r['name']: r for r in json.loads((RESULTS / 'budget_sweep.json').read_text())['runs']}
        scored = json.loads((RESULTS / 'sampling_settings.json').read_text())
        for name, run in REFERENCES.items():  # the two networks the probe starts from, as the sweep trained and scored them
            row = scored[run]['rows'][-1]
            res[name] = dict(name=name, layout=LAYOUTS[name], params=sweep[run]['params'], steps=sweep[run]['steps'],
                             step_s=sweep[run]['step_s'], fid=row['fid'], chunk_fids=row['chunk_fids'], source=run)
        for r in res.values():
            r['macs'] = conv_macs(build(r['name'] if r['name'] in LAYOUTS else r['name'].partition('-seed')[0]))  # NAME-seedS: NAME's network
            print(f"{r['name']}: {r['params']:,} params, {sum(r['macs'].values()) / 1e6:.0f}M MACs, {r['steps']} steps, "
                  f"FID {r['fid']:.2f} at N=2048 (blocks of 512: {', '.join(f'{f:.2f}' for f in r['chunk_fids'])})")
        if out: out.write_text(json.dumps({**res, '_speeds': speeds}, indent=1))

if __name__ == '__main__': main()
