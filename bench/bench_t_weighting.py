"""Uniform t vs "upsampled" t (the forum's idea) at the same training budget, compared by the noise-prediction
loss per t bucket on held-out images.

Run: `python bench/bench_t_weighting.py` (about 5 minutes on one CPU thread; `--quick` for a 20-second smoke run,
`--seed N` for another seed of initial weights, batch order and evaluation draws).
Three small U-Nets (widths 8-16-32, no attention) are trained with the same seed, initial weights, batch order and
number of updates (one epoch over 9,600 training images, batch 64, 150 updates): t uniform, t drawn 70% of the time
from [700, 1000) (the forum's "upsampled noisify"), and 70% from [0, 300). Each is then scored on the same 512 test
images with the same t and noise in every bucket. Lower is better; the ratio columns divide by the uniform model."""
import argparse, time
import torch
from ddpm_from_scratch.process import band_t_weights
from ddpm_from_scratch.timesteps import compare_t_weighting, t_weighting_table

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='a 20-second smoke run (256 training and 64 held-out images)')
    p.add_argument('--seed', type=int, default=None, help="seed of initial weights, batch order and evaluation draws (compare_t_weighting's default if omitted)")
    a = p.parse_args()
    torch.set_num_threads(1)
    quick = a.quick
    weightings = {'uniform': None,
                  'high': band_t_weights(1000, 700, p=0.7),
                  'low': band_t_weights(1000, 0, 300, p=0.7)}
    kw = dict(n_train=256, n_valid=64) if quick else {}
    if a.seed is not None: kw['seed'] = a.seed
    t0 = time.time()
    res = compare_t_weighting(weightings, **kw)
    print(t_weighting_table(res))
    print('training seconds:', {k: round(v['seconds']) for k, v in res.items()}, f'| total {time.time() - t0:.0f}s',
          '| device', next(res['uniform']['model'].parameters()).device)
