"""What the model learns over time, and what it loses without t: the loss per t bucket during training, and the
time-conditioned U-Net against the same U-Net without a time embedding (`time_cond=False`) at the same budget.

Run: `python bench/bench_time.py` (about 5 minutes on one CPU thread; `--quick` for a smoke run in seconds;
`--fig PREFIX` also writes PREFIX_loss_by_t.png and PREFIX_samples.png; `--save FILE` keeps histories and samples,
`--from FILE` re-prints a saved run without training).
Both U-Nets (widths 16-32-64, one resnet block per level, no attention) are trained with the same seed, batches, t and
noise: 2 epochs of the first 9,600 training images, batch 64, 300 updates, one-cycle Adam at peak lr 3e-3, T=1000
linear schedule. The loss per t (10 buckets of 100 steps, 256 test images, the same t and noise every time) is
recorded before training and after 30, 100 and 300 updates. Each model then samples 256 images with 25 DDIM steps
(eta=0) from the same starting noise; FID and KID are against the test split in the shipped classifier's feature
space, beside the floor of 256 real training images (FID at N=256 is biased upwards: compare at equal N). `noisy` is
the fraction of images whose noise level read off the image (`noise_std_mad`: median neighbour difference) is above
0.1, where 99% of real images are below 0.06: samples the sampler left as noise."""
import argparse, time
import torch
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.timesteps import time_experiment, time_table
from ddpm_from_scratch.timesteps import noise_std_mad

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='a smoke run in seconds (512 training images, 1 epoch, 16 samples)')
    p.add_argument('--fig', default=None, metavar='PREFIX', help='also write PREFIX_loss_by_t.png and PREFIX_samples.png')
    p.add_argument('--save', default=None, metavar='FILE', help='keep histories, samples and scores (not the models) in FILE')
    p.add_argument('--from', dest='from_file', default=None, metavar='FILE', help='re-print a --save\'d run without training')
    a = p.parse_args()
    torch.set_num_threads(1)
    quick = a.quick
    xs, xv = fashion_tensors('train')[0], fashion_tensors('test')[0]
    t0 = time.time()
    kw = dict(n_epochs=1, record_at=(2, 8), n_buckets=5, n_samples=16, sample_steps=5) if quick else {}
    if quick:
        from ddpm_from_scratch.fid import ImageEval
        kw['evaluator'] = ImageEval.fashion_mnist('test', n=512, kid_n=512)
        res = time_experiment(xs[:512], xv[:32], bs=64, **kw)
    elif a.from_file:  # re-print everything from a `--save`d run, without training
        res = torch.load(a.from_file, weights_only=False)
    else:
        res = time_experiment(xs[:9600], xv[:256], n_epochs=2, bs=64, lr=3e-3, record_at=(30, 100, 300), n_buckets=10,
                              n_samples=256, sample_steps=25)
    print(time_table(res))
    # the same starting noise went into both models: how alike are the pairs, and which side is left noisy?
    a, b = (res[k]['samples'].flatten(1) for k in ('with t', 'without t'))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    na, nb = (noise_std_mad(res[k]['samples']) > 0.1 for k in ('with t', 'without t'))
    print(f"paired samples: median correlation {corr.median():.2f}, {(corr > 0.8).float().mean():.0%} of pairs above 0.8; "
          f"noisy in both {(na & nb).float().mean():.0%}, only without t {(nb & ~na).float().mean():.0%}, "
          f"only with t {(na & ~nb).float().mean():.0%}")
    if a.save:  # histories, samples and scores (not the models), to redraw figures without retraining
        keep = {k: {n: v for n, v in r.items() if n != 'model'} for k, r in res.items()}
        torch.save(keep, a.save)
    from ddpm_from_scratch.process import linear_schedule
    from ddpm_from_scratch.sampling import GaussianEps
    from ddpm_from_scratch.timesteps import loss_by_t
    sched, nb = linear_schedule(), len(res['with t']['history'][0])
    base = loss_by_t(GaussianEps(sched.alpha_bar, xs[:2048].mean().item(), xs[:2048].std().item()),
                     xv[:32] if quick else xv[:256], sched, nb, seed=1)  # the same t and noise as the records
    print('pixel-Gaussian predictor (no training), loss per bucket:', [float(f'{v:.2g}') for v in base.tolist()])
    for k in ('with t', 'without t'):
        h = res[k]['history']
        print(f"{k}: loss per bucket at", {n: [round(v, 4) for v in L.tolist()] for n, L in h.items()})
        print(f"{k}: train {res[k]['train_s']:.0f}s (incl. loss records), sample {res[k]['sample_s']:.0f}s (wall, shared CPU)")
    if a.fig:
        import matplotlib; matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        from ddpm_from_scratch.data import show_images
        from ddpm_from_scratch.timesteps import plot_loss_by_t
        pre = a.fig
        fig, axs = plt.subplots(1, 2, figsize=(6, 2.4), sharey=True)
        for ax, k in zip(axs, ('with t', 'without t')): plot_loss_by_t(res[k]['history'], ax=ax, title=k, baseline=base)
        fig.tight_layout(); fig.savefig(f'{pre}_loss_by_t.png', dpi=80)
        show_images(torch.cat([res[k]['samples'][:12] for k in ('with t', 'without t', 'real')]), nrows=3, imsize=0.5)
        plt.gcf().savefig(f'{pre}_samples.png', dpi=80, bbox_inches='tight')
        print('figures:', f'{pre}_loss_by_t.png', f'{pre}_samples.png')
    dev = next(res['with t']['model'].parameters()).device if 'model' in res['with t'] else 'cpu (saved run)'
    print(f"total {time.time() - t0:.0f}s on {dev}, {torch.get_num_threads()} thread(s)")
