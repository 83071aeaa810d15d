"""Classifier-free guidance on Fashion-MNIST: does the guided sample show the asked-for class, and what is its FID,
per guidance scale w (0: unconditional, 1: plain conditional, 3: guided).

Run: `python bench/bench_guidance.py` (about 5 minutes on one CPU thread; `--quick` for a smoke run in seconds;
`--grid PATH` also writes a PNG grid of every class at each scale).
One class-conditioned from-scratch U-Net (widths 16-32-64, one resnet block per level, no attention) is trained
with labels dropped 15% of the time (2 epochs of the first 12,800 training images, batch 64, 400 updates, one-cycle
Adam, peak lr 3e-3, T=1000 linear schedule). Then 40 images per class (N=400) are sampled at each scale with 25 DDIM
steps (eta=0) from the same starting noise. `acc`: the shipped classifier's accuracy on the asked-for classes. FID
and KID are against the test split in that classifier's feature space; the `real` row scores 40 real training images
per class the same way (the floor at this N: FID at N=400 is biased upwards). One seed, one run."""
import argparse, time
import torch
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.guidance import train_cfg, guidance_eval, guidance_table
from ddpm_from_scratch.guidance import class_grid

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='a smoke run in seconds (256 images, 1 epoch, 2 per class, 5 DDIM steps)')
    p.add_argument('--grid', default=None, metavar='PATH', help='also write a PNG grid of every class at each scale')
    a = p.parse_args()
    torch.set_num_threads(1)
    quick = a.quick
    x, y = fashion_tensors('train')
    t0 = time.time()
    n_train, epochs, n_per_class, n_steps = (256, 1, 2, 5) if quick else (12_800, 2, 40, 25)
    run = train_cfg(x[:n_train], y[:n_train], n_epochs=epochs, bs=64, lr=3e-3, p_uncond=0.15, seed=0)
    print(f"trained {run['n_updates']} updates ({run['n_epochs']} epochs of {run['n_train']} images, bs {run['bs']}) "
          f"in {run['train_s']:.0f}s; labels dropped: {run['cb'].dropped_fraction:.3f}")
    kw = {}
    if quick:
        from ddpm_from_scratch.fid import ImageEval
        kw['evaluator'] = ImageEval.fashion_mnist('test', n=512, kid_n=512)
    scales = (0., 1., 3.)
    rows = guidance_eval(run['model'], run['cb'].schedule, scales, n_per_class=n_per_class, n_steps=n_steps, **kw)
    print(guidance_table(rows))
    if a.grid:
        import matplotlib; matplotlib.use('Agg')
        from ddpm_from_scratch.guidance import show_class_grid
        path = a.grid
        show_class_grid(class_grid(run["model"], run["cb"].schedule, scales, steps=n_steps, progress=False), scales).savefig(path, dpi=80, bbox_inches='tight')
        print('grid:', path)
    print(f"total {time.time() - t0:.0f}s on {next(run['model'].parameters()).device}, {torch.get_num_threads()} thread(s)")
