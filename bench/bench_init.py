"""Default init + Adam eps=1e-8 vs `init_ddpm` + eps=1e-5: DDPM noise prediction at a high learning rate.

    python bench/bench_init.py [--lrs 0.01 0.015 0.02] [--seeds 42] [--n_train 4800] [--bs 32] [--all4] [--curves]

Same seed and budget for every setting: a fresh small diffusers U-Net, one epoch over `n_train` Fashion-MNIST
images with the Learner + DDPMCB (`fit_ddpm`, one-cycle schedule peaking at each lr), on the CPU with one
thread. Prints, per lr and setting, the final loss (mean of the last 10 batches), the lowest loss, the step of
the highest loss after the first 10, and whether the run diverged (a non-finite loss, or a final loss above 0.5:
predicting zero noise scores 1). `--all4` adds the two mixed settings (init only, eps only)."""
import argparse, sys, time

import torch

from ddpm_from_scratch.data import DataLoaders, fashion_tensors
from ddpm_from_scratch.init import CONFIGS, diverged, loss_curve, small_unet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--lrs', type=float, nargs='+', default=[1e-2, 1.5e-2, 2e-2])
    p.add_argument('--n_train', type=int, default=4800)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--seeds', type=int, nargs='+', default=[42])
    p.add_argument('--all4', action='store_true', help='also init_ddpm with eps=1e-8 and default init with eps=1e-5')
    p.add_argument('--curves', action='store_true', help='print every 10th loss')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    xs = fashion_tensors('train')[0]
    dls = DataLoaders.from_tensors((xs[:args.n_train],), (xs[:64],), args.bs)
    configs = dict(CONFIGS)
    if args.all4: configs.update({'init_ddpm, eps=1e-8': (True, 1e-8), 'default init, eps=1e-5': (False, 1e-5)})
    print(f'{len(dls.train)} batches of {args.bs}, small U-Net ({sum(p.numel() for p in small_unet().parameters()):,} '
          f'parameters), one-cycle, torch {torch.__version__}, 1 CPU thread')
    for lr in args.lrs:
        for seed in args.seeds:
            for name, (use_init, eps) in configs.items():
                t0 = time.time()
                l = loss_curve(use_init, eps, dls, lr=lr, seed=seed)
                fin = sum(l[-10:]) / len(l[-10:])
                worst = max(range(10, len(l)), key=lambda i: l[i] if l[i] == l[i] else float('inf')) if len(l) > 10 else 0
                print(f'lr {lr:<6g} seed {seed:<3} {name:24} final {fin:.4f}  min {min(l):.4f}  max after step 10: {l[worst]:.3f} '
                      f'at step {worst}  diverged: {str(diverged(l)):5}  ({time.time() - t0:.0f} s)', flush=True)
                if args.curves: print('   every 10th loss:', ' '.join(f'{v:.3f}' for v in l[::10]))


if __name__ == '__main__': sys.exit(main())
