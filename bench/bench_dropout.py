"""Dropout before the classifier's last layer, or not: same seed, same epochs, same data.
Then test-time dropout on the dropout model: mean spread on misclassified vs correctly classified test images.

Writes the accuracies, the spreads' summary and their histogram (misclassified vs correct) to `--json`,
which notebook 03 plots.

Run: `python bench/bench_dropout.py --epochs 2 --n_train 20000 --json bench/results/dropout.json`
(defaults: 3 epochs, all 60,000 images)."""
import argparse, json, time
from pathlib import Path
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
    ap.add_argument('--json', default=None, help='write the results here')
    ap.add_argument('--bins', type=int, default=30, help='histogram bins for the spread')
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
    minutes = (time.time() - t0) / 60
    print(f'total time {minutes:.1f} min')
    if a.json:
        hi = float(spread.max())
        hist = lambda s: torch.histc(s, bins=a.bins, min=0, max=hi).int().tolist()
        out = dict(command='python bench/bench_dropout.py ' + ' '.join(f'--{k} {v}' for k, v in vars(a).items() if v is not None and k != 'json'),
                   budget=budget, passes=a.passes, p=a.p,
                   accuracy={k: v['accuracy'] for k, v in res.items()},
                   n_test=len(yt), n_wrong=int(wrong.sum()),
                   spread_mean=dict(wrong=float(spread[wrong].mean()), correct=float(spread[~wrong].mean())),
                   bin_edges=torch.linspace(0, hi, a.bins + 1).tolist(),
                   hist=dict(wrong=hist(spread[wrong]), correct=hist(spread[~wrong])),
                   least_confident=spread.argsort(descending=True)[:8].tolist(),
                   predicted=mean.argmax(-1)[spread.argsort(descending=True)[:8]].tolist(),
                   minutes=round(minutes, 1))
        Path(a.json).write_text(json.dumps(out, indent=1))
        print(f'wrote {a.json}')
