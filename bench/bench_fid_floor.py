"""The FID/KID floor and ceiling: real test images and uniform noise scored against the training statistics.

Run: `python bench/bench_fid_floor.py` (options: `--n 2048`, `--n_train` to use only the first N training images,
`--threads`, `--cache_dir`). Features come from the shipped classifier (`load_classifier()`); the training
statistics are cached (see `ImageEval.fashion_mnist`), so only the first run pays for the 60,000 images.

Printed, all from one run on this machine:
- real: the first `n` test images vs the train statistics (what a perfect generator scores at this N);
- train: the last `n` training images vs the train statistics (part of them unless `--n_train` leaves them out);
- noise: `n` images of uniform noise in [-1, 1] (seeded);
- wrong scale: the same test images in [0, 1] (the course's old FID mistake; the range check only warns)."""
import argparse, time, warnings

import torch

from ddpm_from_scratch.data import default_device, fashion_tensors
from ddpm_from_scratch.fid import ImageEval

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=2048, help='images per scored set')
    p.add_argument('--n_train', '--n-train', type=int, default=None, help='first N training images for the statistics (all if omitted)')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--cache_dir', '--cache-dir', default=None, help='folder for cached statistics (default_cache_dir() if omitted)')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = default_device()
    t0 = time.perf_counter()
    ie = ImageEval.fashion_mnist('train', n=a.n_train, cache_dir=a.cache_dir, device=device)
    t1 = time.perf_counter()
    print(f'{ie} on {device}: {t1 - t0:.1f}s{" (loaded from cache)" if ie.from_cache else ""}')
    xt = fashion_tensors('test')[0][:a.n]
    xtr = fashion_tensors('train')[0][-a.n:]
    sets = {'real test': xt, 'train (last n)': xtr,
            'uniform noise': torch.rand(a.n, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
            'test in [0, 1]': (xt + 1) / 2}
    res = {}
    for name, x in sets.items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            res[name] = s = ie.scores(x)
        print(f'{name:>15}: FID {s["fid"]:10.4g}   KID {s["kid"]:10.3g} ± {s["kid_std"]:.2g}   '
              f'(N={s["n"]}, {time.perf_counter() - t:.1f}s)')
    r, z = res['real test'], res['uniform noise']
    print(f'noise / real test: FID {z["fid"] / r["fid"]:.0f}x')
