"""Data-loading benchmark: batches per second at batch size 512, fast tensor path vs per-item transform path.

    python bench/bench_data.py [--bs 512] [--batches 20] [--threads 2]

Both paths run in this one process, one after the other, and the ratio is what to quote (absolute numbers on a shared
2-core machine are noisy)."""
import argparse, time
import torch
from ddpm_from_scratch.data import DataLoaders, fashion_dls, fashion_transform, load_fashion_mnist

def rate(dl, n_batches):
    it = iter(dl); next(it)  # warm up
    t0 = time.perf_counter()
    for _ in range(n_batches): next(it)
    return n_batches / (time.perf_counter() - t0)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bs', type=int, default=512, help='batch size')
    p.add_argument('--batches', type=int, default=20, help='timed batches per path (after one warm-up batch)')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    bs, n = a.bs, a.batches
    slow = DataLoaders.from_dd(load_fashion_mnist().with_transform(fashion_transform), bs).train
    fast = fashion_dls(bs).train
    r_slow, r_fast = rate(slow, n), rate(fast, n)
    print(f'per-item with_transform path: {r_slow:8.1f} batches/s')
    print(f'fast tensor path:             {r_fast:8.1f} batches/s')
    print(f'ratio fast/transform: {r_fast / r_slow:.0f}x  (batch size {bs}, {n} batches each)')
