"""Train the reference model (class-conditional, label dropout) on the CPU, resumably: the provenance of `ddpm_fashion_v1`.

This loop predates `ddpm_train`'s class conditioning, bf16 and time budget. The next version, `ddpm_fashion_v2`, was
trained by `ddpm_train` itself (its JSON holds the command); this file stays while v1 ships, as v1's provenance.

    python bench/archive/train_reference.py --out ~/ddpm-runs/ref1 [--threads 2] [--ckpt_minutes 5]

Checkpoints atomically every `--ckpt_minutes` to OUT/ckpt.pt (model, EMA, optimiser, step, RNG states); rerunning
the same command continues from it, and the learning-rate schedule and data order are functions of the step, so a
kill loses at most a few minutes. The recipe is fixed in RECIPE (its total step count included): change it only with
a new OUT folder.
"""
import argparse, json, math, os, time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.unet import UNet

RECIPE = dict(unet=dict(channels=(32, 64, 128), n_res=2, attn_res=(8,), n_classes=10),
              schedule='linear', beta_min=1e-4, beta_max=0.02, n_steps=1000,
              total_steps=7000, bs=128, lr=2e-3, warmup=300, ema=0.9995, p_uncond=0.1, flip=True,
              precision='bf16', seed=0)

def lr_at(step, r):
    "Linear warm-up, then cosine decay to 0 over `total_steps`."
    if step < r['warmup']: return r['lr'] * (step + 1) / r['warmup']
    return r['lr'] * 0.5 * (1 + math.cos(math.pi * (step - r['warmup']) / (r['total_steps'] - r['warmup'])))

def save_atomic(obj, path):
    tmp = path.with_suffix('.tmp'); torch.save(obj, tmp); os.replace(tmp, path)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter); p.add_argument('--out', required=True); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--ckpt_minutes', type=float, default=5.)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out).expanduser(); out.mkdir(parents=True, exist_ok=True)
    r = RECIPE
    x, y = fashion_tensors('train')
    torch.manual_seed(r['seed'])
    model = UNet(**r['unet'])
    ema = UNet(**r['unet']); ema.load_state_dict(model.state_dict()); ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=r['lr'], eps=1e-5)
    beta = torch.linspace(r['beta_min'], r['beta_max'], r['n_steps'], dtype=torch.float64)
    abar = torch.cumprod(1 - beta, 0).float()
    g = torch.Generator().manual_seed(r['seed'] + 1)
    step, cpu0, log, notes = 0, 0., [], []
    ck_path = out / 'ckpt.pt'
    if ck_path.exists():
        ck = torch.load(ck_path, weights_only=False)
        if ck['recipe'] != json.loads(json.dumps(r)): raise SystemExit(f"{ck_path} was trained with another recipe")
        model.load_state_dict(ck['model']); ema.load_state_dict(ck['ema']); opt.load_state_dict(ck['opt'])
        g.set_state(ck['gen']); step, cpu0, log, notes = ck['step'], ck['cpu_seconds'], ck['log'], ck.get('notes', [])
        print(f"resumed at step {step}", flush=True)
    nb = len(x) // r['bs']
    c_start, w_last, losses = time.process_time(), time.time(), []
    def checkpoint():
        save_atomic(dict(recipe=json.loads(json.dumps(r)), model=model.state_dict(), ema=ema.state_dict(),
                         opt=opt.state_dict(), gen=g.get_state(), step=step,
                         cpu_seconds=cpu0 + time.process_time() - c_start, log=log, notes=notes), ck_path)
    while step < r['total_steps']:
        epoch, i = divmod(step, nb)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(r['seed'] * 1000 + epoch))
        idx = perm[i * r['bs']:(i + 1) * r['bs']]
        x0, c = x[idx], y[idx].long()
        if r['flip']: x0 = torch.where(torch.rand(len(x0), 1, 1, 1, generator=g) < 0.5, x0.flip(-1), x0)
        c = torch.where(torch.rand(len(c), generator=g) < r['p_uncond'], torch.full_like(c, 10), c)
        t = torch.randint(0, r['n_steps'], (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ab = abar[t].reshape(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        for grp in opt.param_groups: grp['lr'] = lr_at(step, r)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            pred = model(xt, t, c)
        loss = F.mse_loss(pred.float(), eps)
        if not torch.isfinite(loss): raise SystemExit(f"non-finite loss at step {step}")
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        step += 1
        d = min(r['ema'], (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()): pe.lerp_(pm, 1 - d)
            for be, bm in zip(ema.buffers(), model.buffers()): be.copy_(bm)
        losses.append(loss.item())
        if step % 100 == 0:
            log.append((step, sum(losses) / len(losses))); losses = []
            print(f"step {step}/{r['total_steps']} loss {log[-1][1]:.4f} lr {lr_at(step, r):.2e} "
                  f"cpu {cpu0 + time.process_time() - c_start:.0f}s", flush=True)
        if time.time() - w_last > a.ckpt_minutes * 60 or step == r['total_steps']:
            checkpoint(); w_last = time.time()
    print("done", flush=True)

if __name__ == '__main__': main()
