"""Dropout before the classifier's last layer, or not: same seed, same epochs, same data.
Then test-time dropout on the dropout model: mean spread on misclassified vs correctly classified test images.

Run: `python bench/bench_dropout.py --epochs 2 --n_train 20000` (defaults: 3 epochs, all 60,000 images)."""
import argparse, time
import torch
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.dropout import compare_dropout, ttd_predict

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--epochs', type=int, default=3, help='epochs per run')
    ap.add_argument('--n_train', type=int, default=None, help='training images per run (all if omitted)')
    ap.add_argument('--p', type=float, default=0.25, help='dropout probability of the second run')
    ap.add_argument('--passes', type=int, default=20, help='stochastic passes for test-time dropout')
    ap.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    res = compare_dropout(a.p, epochs=a.epochs, n_train=a.n_train, progress=False)
    budget = f'{a.epochs} epochs on {a.n_train or 60_000} images, seed 42'
    for k, v in res.items(): print(f'{k:12s}: test accuracy {v["accuracy"]:.4f} on 10,000 test images ({budget})')
    xt, yt = fashion_tensors('test')
    mean, spread = ttd_predict(res[f'dropout {a.p}']['model'], xt, n=a.passes)
    wrong = mean.argmax(-1) != yt
    print(f'test-time dropout, {a.passes} passes, 10,000 test images: {int(wrong.sum())} misclassified, '
          f'accuracy of the mean prediction {1 - wrong.float().mean():.4f}')
    print(f'mean spread: misclassified {spread[wrong].mean():.4f}, correct {spread[~wrong].mean():.4f}, '
          f'ratio {spread[wrong].mean() / spread[~wrong].mean():.1f}x')
    print(f'total time {(time.time() - t0) / 60:.1f} min')
