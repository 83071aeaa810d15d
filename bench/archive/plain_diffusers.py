"""The baseline: a plain diffusers training loop (`UNet2DModel` + `DDPMScheduler`), given the CPU time our main
job took, then sampled the diffusers way and with our default sampler, and scored like `ddpm_eval`.

    OMP_NUM_THREADS=1 python bench/archive/plain_diffusers.py --work lr1e-4 --lr 1e-4      # one run per core
    OMP_NUM_THREADS=1 python bench/archive/plain_diffusers.py --work lr1e-3 --lr 1e-3
    OMP_NUM_THREADS=1 python bench/archive/plain_diffusers.py --work lr3e-3-seed1 --lr 3e-3 --seed 1 --steps 2721   # lr3e-3's steps
    python bench/archive/plain_diffusers.py --score 'main job=runs/ddpm'                   # our main job, scored the same way
    python bench/archive/plain_diffusers.py --score 'main job=runs/ddpm' --n 2048          # DDIM-50 again on 2,048 images
    python bench/archive/plain_diffusers.py --score lr3e-3=~/ddpm-runs/plain/lr3e-3 --n 2048
    python bench/archive/plain_diffusers.py --report --json bench/results/plain_diffusers.json   # and each SEEDS group's means

The loop is what diffusers' own unconditional training example does, at this project's batch size:
- the network: `UNet2DModel` 16-32-64, one block per level, no attention (`budget_sweep.DIFFUSERS`, the diffusers
  network that scored best at the 9-minute budget when trained with our recipe), so the baseline gets its best net;
- `DDPMScheduler()` as it comes (linear betas 1e-4..0.02, T=1000), noise drawn per image, MSE on the noise;
- AdamW (betas 0.95/0.999, weight decay 1e-6, eps 1e-8), 500 warm-up steps then cosine decay to 0 over the run
  (the step count comes from timing 20 early steps against the budget, and is re-planned every 300 steps from the
  run's own speed, so the decay ends as the budget does even when the machine's load changes), float32, no EMA,
  batch 64;
- the budget is process CPU time (`--cpu_minutes`, default 16.4: `ddpm_train --out runs/ddpm --minutes 9` used
  971 + 15 CPU-seconds on this machine), so a run on one thread gets the same arithmetic as the main job on two.
Scoring (N=512, seed 0, batches of 64, the test split, floor beside it):
- 'diffusers DDPM-1000': `DDPMScheduler.step` over its 1,000 timesteps, as `DDPMPipeline` samples (clipped x0,
  the posterior variance);
- 'ours DDIM-50': `ddim.generate` with the command line's default of the time: DDIM-50, eta 1, not clamped.
Training checkpoints every 3 minutes (state.pt), and the DDPM batches are saved one by one: a killed run resumes.
"""
import argparse, json, math, time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ddpm_from_scratch.train import TrainConfig, build_schedule, save_checkpoint
from ddpm_from_scratch.data import atomic_write, fashion_tensors, set_seed
from ddpm_from_scratch.ddim import generate
from ddpm_from_scratch.unet import fashion_unet
from ddpm_from_scratch.experiments import load_bench_model
from ddpm_from_scratch.fid import ImageEval

import sys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the live scripts it builds on
from budget_sweep import DIFFUSERS  # a live script in bench/
WARMUP, BS, TIMED, REPLAN = 500, 64, 20, 300

def train(d:Path, lr:float, cpu_minutes:float, seed:int=0, steps:int=None):
    "Train into folder `d` until `cpu_minutes` of process CPU time are spent, or for `steps` steps (resuming from d/state.pt); return the state."
    set_seed(seed)
    x, _ = fashion_tensors('train')
    model, sched = fashion_unet(**DIFFUSERS), DDPMScheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    st = dict(step=0, cpu=0., total=steps, losses=[])  # a given step count is never re-planned
    f = d / 'state.pt'
    if f.exists():
        st = torch.load(f, weights_only=False)
        model.load_state_dict(st.pop('model')); opt.load_state_dict(st.pop('opt'))
        print(f"resuming at step {st['step']} ({st['cpu'] / 60:.1f} CPU-minutes spent)", flush=True)
        if st['total'] is not None and 'plan_step' not in st: st['t_plan'], st['plan_step'] = st['cpu'], st['step']  # planned before re-plans existed
    g = torch.Generator().manual_seed(seed + st['step'])
    c0, saved = time.process_time() - st['cpu'], time.time()
    def save():
        atomic_write(f, lambda p: torch.save(dict(st, model=model.state_dict(), opt=opt.state_dict()), p))
    while (steps or (time.process_time() - c0) < cpu_minutes * 60) and (st['total'] is None or st['step'] < st['total']):
        if st['step'] == 5: st['t5'] = time.process_time() - c0  # the first steps are slow: time the next TIMED
        if st['total'] is None and st['step'] == 5 + TIMED:  # plan the cosine decay from the speed of those steps
            per_step = (time.process_time() - c0 - st['t5']) / TIMED
            st['total'] = st['step'] + int((cpu_minutes * 60 - (time.process_time() - c0)) / per_step)
            print(f"{TIMED} steps timed at {per_step:.3f} CPU-s: planning {st['total']} steps", flush=True)
            st['t_plan'], st['plan_step'] = time.process_time() - c0, st['step']
        if st.get('plan_step') and st['step'] == st['plan_step'] + REPLAN:  # re-plan every REPLAN steps from the run's own speed
            per_step = (time.process_time() - c0 - st['t_plan']) / REPLAN
            st['total'] = st['step'] + int((cpu_minutes * 60 - (time.process_time() - c0)) / per_step)
            print(f"step {st['step']}: {per_step:.3f} CPU-s per step lately, re-planning {st['total']} steps", flush=True)
            st['t_plan'], st['plan_step'] = time.process_time() - c0, st['step']
        total = st['total'] or 10 ** 6  # until planned: warm-up only (the cosine barely moves in 20 steps of a long run)
        for grp in opt.param_groups: grp['lr'] = lr * _lr_factor(st['step'], total)
        xb = x[torch.randint(len(x), (BS,), generator=g)]
        noise = torch.randn(xb.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (BS,), generator=g)
        loss = F.mse_loss(model(sched.add_noise(xb, noise, t), t).sample, noise)
        opt.zero_grad(); loss.backward(); opt.step()
        st['step'] += 1; st['losses'].append(loss.item())
        if st['step'] % 200 == 0: print(f"step {st['step']}: loss {sum(st['losses'][-200:]) / 200:.4f}", flush=True)
        if time.time() - saved > 180: st['cpu'] = time.process_time() - c0; save(); saved = time.time()
    st['cpu'] = time.process_time() - c0; save()
    return model, st

SEEDS = {  # the same run with several seeds (0-4 for the plain loop, 0-5 for ours): the plain loop at its best lr, our main job, our UNet in the dense layout
    'plain loop, lr 3e-3 (2,721 steps)': ['lr3e-3'] + [f'lr3e-3-seed{s}' for s in range(1, 5)],
    'main job: M2 (1,998 steps)': ['main job'] + [f'M2-seed{s}' for s in range(1, 6)],
    'dense layout, our blocks (3,608 steps)': [f'Dense-ours-seed{s}' for s in range(6)]}

def seed_summary(runs:dict)->dict:
    "For each group of SEEDS whose runs are all done: each seed's FID at N=512 sampled the diffusers way (plain loop only) and with DDIM-50, and their means."
    out = {}
    for g, names in SEEDS.items():
        if not all(n in runs for n in names): continue
        rs = [runs[n] for n in names]
        ddpm = [r['diffusers_ddpm1000']['fid'] for r in rs if 'diffusers_ddpm1000' in r]
        ddim = [r['ours_ddim50']['fid'] if 'ours_ddim50' in r else r['ddim50'][512]['fid'] for r in rs]
        out[g] = dict(runs=names, ddpm1000=ddpm, ddim50=ddim, mean_ddpm1000=sum(ddpm) / len(ddpm) if ddpm else None,
                      mean_ddim50=sum(ddim) / len(ddim))
    return out

def _lr_factor(step, total):
    "diffusers' `get_cosine_schedule_with_warmup` (one half-cosine), as a function of the step."
    if step < WARMUP: return step / WARMUP
    return max(0., 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP))))

@torch.no_grad()
def ddpm_pipeline(model, n:int, parts:Path, seed:int=0)->torch.Tensor:
    "`n` images the way `DDPMPipeline` makes them: `DDPMScheduler.step` over all 1,000 timesteps, batch i seeded seed+i."
    sched = DDPMScheduler(); sched.set_timesteps(1000)
    parts.mkdir(exist_ok=True); out = []
    for i in range(math.ceil(n / BS)):
        f = parts / f'{i}.pt'
        if not f.exists():
            g = torch.Generator().manual_seed(seed + i)
            xt = torch.randn((min(BS, n - i * BS), 1, 32, 32), generator=g)
            for t in sched.timesteps: xt = sched.step(model(xt, t).sample, t, xt, generator=g).prev_sample
            atomic_write(f, lambda p: torch.save(xt.clamp(-1, 1), p))
            print(f"DDPM batch {i + 1}/{math.ceil(n / BS)}", flush=True)
        out.append(torch.load(f))
    return torch.cat(out)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=str(Path.home() / 'ddpm-runs' / 'plain'))
    p.add_argument('--work', default=None, help='train and score the run of this name')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--seed', type=int, default=0, help='seed of the initial weights, the batches and the noise')
    p.add_argument('--cpu_minutes', type=float, default=16.4)
    p.add_argument('--steps', type=int, default=None, help='train this many steps instead of a CPU budget (e.g. what a run alone on the machine got)')
    p.add_argument('--n', type=int, default=512)
    p.add_argument('--score', default=None, metavar='NAME=CKPT', help="score a checkpoint (ddpm_train's or a run's) with DDIM-50 at --n, as run NAME")
    p.add_argument('--report', action='store_true', help='print every finished run')
    p.add_argument('--json', default=None, help='with --report: also write them all to this file')
    a = p.parse_args()
    root = Path(a.root)
    def ours_row(model, schedule, ev):  # DDIM-50, eta 1, not clamped: the command line's default when these runs were made
        c = time.process_time()
        imgs = generate(model, schedule, a.n, 'ddim', seed=0, progress=False, steps=50, eta=1., clip=False)
        return dict(fid=ev.scores(imgs)['fid'], cpu_s=time.process_time() - c)
    if a.score:
        name, ck = a.score.split('=', 1)
        bm, ev = load_bench_model(Path(ck).expanduser()), ImageEval.fashion_mnist('test')
        res = dict(n=a.n, steps=bm.info['updates'], floor=ev.scores(fashion_tensors('train')[0][:a.n])['fid'],
                   **ours_row(bm.model, bm.schedule, ev))
        print(f"{name}: DDIM-50 FID {res['fid']:.2f} at N={a.n}", flush=True)
        (root / name).mkdir(parents=True, exist_ok=True); (root / name / f'ddim50_n{a.n}.json').write_text(json.dumps(res, indent=1))
    if a.work:
        d = root / a.work; d.mkdir(parents=True, exist_ok=True)
        model, st = train(d, a.lr, a.cpu_minutes, a.seed, a.steps)
        cfg = TrainConfig(schedule='linear', bs=BS, lr=a.lr, ema=0., total_steps=st['step'])
        save_checkpoint(d / 'checkpoint.pt', config=asdict(cfg), epoch=0, step=st['step'],
                        model=model.state_dict(), ema=None, arch='diffusers', unet_kwargs=DIFFUSERS)
        model.eval(); ev = ImageEval.fashion_mnist('test')
        res = dict(name=a.work, kind='plain diffusers loop', lr=a.lr, seed=a.seed, steps=st['step'], planned=st['total'], train_cpu_s=st['cpu'],
                   final_loss=sum(st['losses'][-100:]) / 100, n=a.n, floor=ev.scores(fashion_tensors('train')[0][:a.n])['fid'])
        res['ours_ddim50'] = ours_row(model, build_schedule(cfg), ev)
        print(f"{a.work}: ours DDIM-50 FID {res['ours_ddim50']['fid']:.2f}", flush=True)
        c = time.process_time()
        res['diffusers_ddpm1000'] = dict(fid=ev.scores(ddpm_pipeline(model, a.n, d / 'ddpm_parts'))['fid'], cpu_s=time.process_time() - c)
        print(f"{a.work}: diffusers DDPM-1000 FID {res['diffusers_ddpm1000']['fid']:.2f}", flush=True)
        (d / 'result.json').write_text(json.dumps(res, indent=1))
    if a.report:
        runs = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            r = json.loads((d / 'result.json').read_text()) if (d / 'result.json').exists() else dict(name=d.name)
            r['ddim50'] = {int(f.stem.split('_n')[1]): json.loads(f.read_text()) for f in sorted(d.glob('ddim50_n*.json'))}
            if 'steps' in r or r['ddim50']: runs[d.name] = r
            line = f"{d.name}: " + (f"lr {r['lr']:g}, {r['steps']} steps in {r['train_cpu_s'] / 60:.1f} CPU-min, FID at N={r['n']}: "
                                    f"DDPMScheduler-1000 {r['diffusers_ddpm1000']['fid']:.2f}, DDIM-50 {r['ours_ddim50']['fid']:.2f}; " if 'steps' in r else '')
            print(line + ', '.join(f"DDIM-50 at N={n} {v['fid']:.2f} (floor {v['floor']:.2f})" for n, v in r['ddim50'].items()))
        runs['_seeds'] = seed_summary(runs)
        for g, v in runs['_seeds'].items():
            print(f"{g}: " + ', '.join(f"{k} {' / '.join(f'{x:.2f}' for x in v[k])} (mean {v['mean_' + k]:.2f})" for k in ('ddpm1000', 'ddim50') if v[k]))
        if a.json: Path(a.json).write_text(json.dumps(runs, indent=1))

if __name__ == '__main__': main()
