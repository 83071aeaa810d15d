"""U-Net benchmark: the from-scratch `UNet` vs diffusers' `UNet2DModel` of comparable size, trained side by side.

Run: `python bench/bench_unet.py` (about 2-3 minutes on 2 free CPU cores; run it when nothing else heavy runs).
Options: `--steps 150 --warmup 10 --lr 1e-3 --bs 64 --threads 2 --seed 0 --lpb N` (diffusers `layers_per_block`; by
default the value whose parameter count is closest to ours) and `--mine '{"n_res": 1}'` (JSON kwargs for `UNet`).

Both models see exactly the same batches, timesteps and noise (one generator draws them once per step), start from
the same seed, and use Adam with the same learning rate on the MSE between predicted and true noise, with the DDPM
linear schedule (beta 1e-4..0.02, 1000 steps). The two training steps are interleaved (A,B then B,A) so that load
from other processes on a shared machine hits both alike; the time per step is the mean over the steps after
`--warmup`. The loss is measured after training on a fixed held-out set (1,024 test images at evenly spread t, fixed
noise) in eval mode, and also as the mean training loss over the last 30 steps. The ratios are what to quote."""
import argparse, json, platform, statistics, time

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.unet import UNet


def n_params(m): return sum(p.numel() for p in m.parameters())

def diffusers_unet(lpb):
    "The lesson's diffusers U-Net (default block types: attention at 16, 8 and 4 and in the middle)."
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128, 128),
                       norm_num_groups=8, layers_per_block=lpb)

def pred(m, x, t):
    out = m(x, t)
    return out.sample if hasattr(out, 'sample') and not isinstance(out, torch.Tensor) else out

def noisify(x0, t, eps, abar):
    a = abar[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps

def train_step(m, opt, x_t, t, eps):
    t0 = time.perf_counter()
    loss = F.mse_loss(pred(m, x_t, t), eps)
    opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - t0, loss.item()

@torch.no_grad()
def eval_loss(m, x_t, t, eps, bs=256):
    m.eval()
    tot = sum(F.mse_loss(pred(m, x_t[i:i+bs], t[i:i+bs]), eps[i:i+bs], reduction='sum').item()
              for i in range(0, len(x_t), bs))
    m.train()
    return tot / eps.numel()

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=150); p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--lr', type=float, default=1e-3); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--lpb', type=int, default=None); p.add_argument('--mine', type=str, default='{}')
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    xtr, _ = fashion_tensors('train'); xte, _ = fashion_tensors('test')
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    g = torch.Generator().manual_seed(1234)
    ev_x0 = xte[:1024]; ev_t = torch.linspace(0, 999, 1024).round().long()
    ev_eps = torch.randn(ev_x0.shape, generator=g); ev_xt = noisify(ev_x0, ev_t, ev_eps, abar)

    torch.manual_seed(a.seed); mine = UNet(**json.loads(a.mine))
    n_mine = n_params(mine)
    lpb = a.lpb or min((1, 2, 3), key=lambda l: abs(n_params(diffusers_unet(l)) - n_mine))
    torch.manual_seed(a.seed); ref = diffusers_unet(lpb)
    models = {'ours': mine, 'diffusers': ref}
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr) for k, m in models.items()}
    times, losses = {k: [] for k in models}, {k: [] for k in models}

    print(f'machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {a.threads}')
    print(f'ours:      UNet({mine.config})')
    print(f'diffusers: UNet2DModel(block_out_channels=(32, 64, 128, 128), layers_per_block={lpb}, norm_num_groups=8, '
          f'default block types)')
    print(f'params: ours {n_mine:,}  diffusers {n_params(ref):,}  (ratio diffusers/ours {n_params(ref)/n_mine:.2f})')
    print(f'training: {a.steps} steps, batch {a.bs}, Adam lr {a.lr}, seed {a.seed}, interleaved; timing after {a.warmup} warm-up steps')
    t_start = time.perf_counter()
    for step in range(a.steps):
        idx = torch.randint(0, len(xtr), (a.bs,), generator=g)
        t = torch.randint(0, 1000, (a.bs,), generator=g)
        eps = torch.randn((a.bs, 1, 32, 32), generator=g)
        x_t = noisify(xtr[idx], t, eps, abar)
        order = list(models) if step % 2 == 0 else list(models)[::-1]
        for k in order:
            dt, l = train_step(models[k], opts[k], x_t, t, eps)
            times[k].append(dt); losses[k].append(l)
        if (step + 1) % 25 == 0:
            print(f'  step {step+1:4d}: loss ours {losses["ours"][-1]:.4f} diffusers {losses["diffusers"][-1]:.4f} '
                  f'({time.perf_counter() - t_start:.0f}s)', flush=True)

    res = {}
    for k, m in models.items():
        ts = times[k][a.warmup:]
        res[k] = dict(mean=statistics.mean(ts), median=statistics.median(ts), train=statistics.mean(losses[k][-30:]),
                      eval=eval_loss(m, ev_xt, ev_t, ev_eps))
    o, d = res['ours'], res['diffusers']
    for k, r in res.items():
        print(f'{k:10s} step time mean {r["mean"]*1000:7.1f} ms  median {r["median"]*1000:7.1f} ms | '
              f'train loss (last 30) {r["train"]:.4f} | held-out loss {r["eval"]:.4f}')
    speed = d['mean'] / o['mean']
    print(f'step-time ratio diffusers/ours: {speed:.2f}x (mean), {d["median"] / o["median"]:.2f}x (median)')
    print(f'held-out loss after {a.steps} steps: ours {o["eval"]:.4f} vs diffusers {d["eval"]:.4f} '
          f'(ratio ours/diffusers {o["eval"] / d["eval"]:.3f})')
    met = speed >= 1.3 and o['eval'] <= d['eval']
    print(f'target (>= 1.3x faster per step at equal or lower loss): {"met" if met else "NOT met"}'
          f'  [total {time.perf_counter() - t_start:.0f}s]')

if __name__ == '__main__': main()
