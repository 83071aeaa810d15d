"""Dropout before the classifier's last layer, or not: same seed, same epochs, full training set.
Then test-time dropout on the dropout model: mean spread on misclassified vs correctly classified test images.

Run: `python bench/bench_dropout.py [epochs]` (default 3 epochs per run)."""
import sys, time
import torch
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.dropout import compare_dropout, ttd_predict

if __name__ == '__main__':
    torch.set_num_threads(2)
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    t0 = time.time()
    res = compare_dropout(0.25, epochs=epochs, progress=False)
    for k, v in res.items(): print(f'{k:12s}: test accuracy {v["accuracy"]:.4f}  ({epochs} epochs, seed 42)')
    xt, yt = fashion_tensors('test')
    mean, spread = ttd_predict(res['dropout 0.25']['model'], xt, n=20)
    wrong = mean.argmax(-1) != yt
    print(f'test-time dropout, 20 passes, 10,000 test images: {int(wrong.sum())} misclassified')
    print(f'mean spread: misclassified {spread[wrong].mean():.4f}, correct {spread[~wrong].mean():.4f}, '
          f'ratio {spread[wrong].mean() / spread[~wrong].mean():.1f}x')
    print(f'total time {(time.time() - t0) / 60:.1f} min')
