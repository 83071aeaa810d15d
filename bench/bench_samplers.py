"""Sampler benchmark: FID, KID and seconds per image for DDPM (all steps) and DDIM (any steps, any eta), for one or
more checkpoints, with the real-data floor at the same number of images N. The table is what notebook 18 shows.

Benchmark:   python bench/bench_samplers.py --n 256 --rows grid --model runs/a --model runs/b [--json results.json]
Train a diffusers UNet2DModel with the command line's recipe (for the "ours vs diffusers" rows):
             python bench/bench_samplers.py --train_diffusers runs/d --channels 8,16,32 --n_train 10000 --epochs 3

--model takes a checkpoint file or folder written by `ddpm_train` or by --train_diffusers, optionally named
`--model NAME=PATH` (else the folder's name). --rows is comma-separated: `ddpm`, `ddimS` (eta 0), `ddimS-etaE`, or
`grid` (DDPM with all 1,000 steps and DDIM 25/50/100/200 at eta 0 and 1).

With --json the results accumulate in that file across runs (same N only) and every run prints the table of all of
them, so a long benchmark can run in pieces. Finished batches of images are kept in --parts (default JSON.parts):
with --max_minutes even one row (1,000-step DDPM) can be spread over several runs. A batch's file does not depend on N,
so a run at --n 512 reuses the first 512 images of a run at --n 2048 (same --bs and --seed).
Several processes may run at once with the same --parts (one thread each on a CPU): each computes the batches no other
live process has claimed and waits for the rest, so two workers finish one long row in half the time. Give each its
own --json, then run once more with all rows and the final --json to gather every row from the saved batches.
`--table_only --blocks K` also scores every row in K disjoint blocks of its saved batches (N/K images each): how far
FID moves with the draw of the noise alone.
Rows: `ddim100-w1` guides a class-conditional model with scale 1 towards the classes 0..9 in turn and adds the shipped
classifier's accuracy on the asked-for class.

Times are measured in this run on this machine, per row, for sampling N images in batches of --bs: wall-clock
seconds and the CPU time of this process (on a shared CPU the CPU time is the one that measures our work; on a GPU,
the wall clock). Seconds for 2,048 images are these timings extrapolated linearly, and labelled so.
FID/KID: features of the shipped Fashion-MNIST classifier, against the statistics of the test split, with the
real-data floor (the first N training images) at the same N.
"""
import argparse, json, os, sys, time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=256, help='generated images per row (the published tables: 2048)')
    p.add_argument('--rows', default='grid', help="comma-separated rows: ddpm, ddim100, ddim100-eta1, grid")
    p.add_argument('--model', action='append', default=[], help='checkpoint (file or folder), optionally NAME=PATH; repeat')
    p.add_argument('--json', default=None, help='accumulate results in this JSON file (and read earlier rows from it)')
    p.add_argument('--table_only', '--table-only', action='store_true', help='print the table stored in --json and exit')
    p.add_argument('--seed', type=int, default=0, help='seed of the sampling noise')
    p.add_argument('--bs', type=int, default=64, help='sampling batch size (batch i is seeded with seed + i)')
    p.add_argument('--parts', default=None, help='keep finished batches here and resume from them (default with --json: JSON.parts)')
    p.add_argument('--max_minutes', '--max-minutes', type=float, default=None, help='start no new batch after this many minutes; rerun to finish')
    p.add_argument('--device', default=None, help='cpu, cuda, ...; picked automatically if omitted')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (1 on a shared machine)')
    p.add_argument('--raw', action='store_true', help='use the raw weights instead of the EMA weights')
    p.add_argument('--grid', default=None, help='also write a PNG with the first --grid_k images of every row (from --parts)')
    p.add_argument('--grid_rows', '--grid-rows', default=None, help='only these MODEL:ROW lines in the PNG, comma-separated')
    p.add_argument('--grid_k', '--grid-k', type=int, default=8, help='images per line of the PNG')
    p.add_argument('--blocks', type=int, default=None, metavar='K',
                   help='with --table_only: also score each row in K disjoint blocks of N/K images (from --parts), '
                        'to see how much FID moves with the draw of the noise')
    t = p.add_argument_group('training a diffusers UNet2DModel with the ddpm_train recipe')
    t.add_argument('--train_diffusers', '--train-diffusers', default=None, metavar='OUT', help='train into folder OUT, then exit')
    t.add_argument('--channels', default='8,16,32', help='block_out_channels')
    t.add_argument('--layers_per_block', type=int, default=1)
    t.add_argument('--attention', action='store_true', help='attention blocks (the diffusers default layout)')
    for name, typ, default in [('n_train', int, 10_000), ('epochs', int, 3), ('bs_train', int, 128), ('lr', float, 3e-3),
                               ('ema', float, 0.99), ('schedule', str, 'linear'), ('n_steps', int, 1000), ('train_seed', int, 0)]:
        t.add_argument(f'--{name}', type=typ, default=default)
    a = p.parse_args(argv)

    os.environ.setdefault('OMP_NUM_THREADS', str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    from ddpm_from_scratch.experiments import (bench_samplers, bench_table, load_bench_model, new_results, parse_rows,
                                               train_diffusers)
    from ddpm_from_scratch.train import TrainConfig

    try:
        if a.train_diffusers:
            ch = tuple(int(c) for c in a.channels.split(','))
            cfg = TrainConfig(channels=ch, schedule=a.schedule, n_steps=a.n_steps, epochs=a.epochs, bs=a.bs_train,
                              lr=a.lr, n_train=a.n_train, ema=a.ema, seed=a.train_seed)
            kw = dict(channels=ch, attention=a.attention, layers_per_block=a.layers_per_block)
            t0 = time.time()
            path = train_diffusers(cfg, a.train_diffusers, kw, device=a.device)
            print(f"checkpoint: {path}  ({time.time() - t0:.0f}s)")
            return 0
        res = None
        if a.json and Path(a.json).exists(): res = json.loads(Path(a.json).read_text())
        parts = a.parts or (a.json + '.parts' if a.json else None)
        if a.table_only:
            if res is None: raise ValueError('--table_only needs an existing --json file')
            print(bench_table(res))
            if a.grid: write_grid(res, parts, a)
            if a.blocks: block_fids(res, parts, a)
            return 0
        if not a.model: raise ValueError('give at least one --model checkpoint (or --train_diffusers OUT)')
        rows = parse_rows(a.rows)
        models = []
        for spec in a.model:
            name, _, path = spec.rpartition('=') if '=' in spec else (None, '', spec)
            models.append(load_bench_model(path, name or None, ema=not a.raw))
        from ddpm_from_scratch.fid import ImageEval
        ev = ImageEval.fashion_mnist('test', device=a.device)
        def save(r):
            if a.json:
                from ddpm_from_scratch.data import atomic_write
                atomic_write(Path(a.json), lambda tmp: Path(tmp).write_text(json.dumps(r, indent=1)))
        res = res or new_results(a.n)
        deadline = None if a.max_minutes is None else time.time() + 60 * a.max_minutes
        for bm in models:  # one model at a time, saving after each, so an interrupted run keeps what it measured
            res = bench_samplers([bm], rows, ev, a.n, a.seed, a.bs, a.device, results=res,
                                 log=lambda s: print(s, flush=True), parts_dir=parts, deadline=deadline)
            save(res)
        print()
        print(bench_table(res))
        if a.grid: write_grid(res, parts, a)
        if res.get('pending'):
            print(f"\n{len(res['pending'])} row(s) unfinished at the deadline: run the same command again to finish them"
                  + ('' if parts else ' (pass --parts or --json to keep finished batches)'))
        return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def block_fids(res, parts, a):
    "Print each row's FID in `a.blocks` disjoint blocks of its saved batches: the spread that comes from the noise alone."
    import torch
    from ddpm_from_scratch.experiments import part_name
    from ddpm_from_scratch.fid import ImageEval
    n, k = res['n'], a.blocks
    if parts is None: raise ValueError('--blocks needs the saved batches: pass --parts or --json')
    if k < 2 or n % (k * a.bs): raise ValueError(f'--blocks: N={n} must split into K>=2 blocks of whole batches of {a.bs}')
    per = n // (k * a.bs)  # batches per block
    ev = ImageEval.fashion_mnist('test', device=a.device)
    print(f"\nFID in {k} disjoint blocks of {n // k} images (batches {per} at a time):")
    for r in res['rows']:
        fids = []
        for b in range(k):
            files = [Path(parts) / part_name(r['model'], r['row'], a.bs, a.seed, i, a.bs) for i in range(b * per, (b + 1) * per)]
            if not all(f.exists() for f in files): raise ValueError(f"--blocks: batches of {r['row']} are missing in {parts}")
            fids.append(ev.scores(torch.cat([torch.load(f, weights_only=True)['imgs'] for f in files]))['fid'])
        print(f"{r['model']:>18} {r['row']:>20}: " + ' '.join(f'{f:5.2f}' for f in fids)
              + f"   (whole: {r['fid']:.2f}, spread {max(fids) - min(fids):.2f})")


def write_grid(res, parts, a):
    "A PNG with one line of images per result row, read back from the first saved batch of that row."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torch
    from ddpm_from_scratch.experiments import part_name
    if parts is None: raise ValueError('--grid needs the saved batches: pass --parts or --json')
    want = None if not a.grid_rows else [tuple(o.split(':')) for o in a.grid_rows.split(',')]
    rows = [r for r in res['rows'] if want is None or (r['model'], r['row']) in want]
    if want: rows.sort(key=lambda r: want.index((r['model'], r['row'])))
    if not rows: raise ValueError('--grid: no finished rows to show')
    fig, axs = plt.subplots(len(rows), 1, figsize=(a.grid_k * 0.45 + 1.6, len(rows) * 0.5), squeeze=False)
    for ax, r in zip(axs[:, 0], rows):
        f = Path(parts) / part_name(r['model'], r['row'], a.bs, a.seed, 0, min(a.bs, res['n']))
        if not f.exists(): raise ValueError(f'--grid: {f} is missing (same --bs and --seed as the run?)')
        x = torch.load(f, weights_only=True)['imgs'][:a.grid_k, 0]
        ax.imshow(torch.cat(list(x), 1).numpy(), cmap='gray', vmin=-1, vmax=1, interpolation='nearest')
        ax.set_xticks([]); ax.set_yticks([])
        ax.set_ylabel(f"{r['model']}\n{r['row']}  FID {r['fid']:.0f}", rotation=0, ha='right', va='center', fontsize=6)
    fig.subplots_adjust(left=1.5 / (a.grid_k * 0.45 + 1.6), right=0.99, top=0.99, bottom=0.01, hspace=0.08)
    fig.savefig(a.grid, dpi=72)
    from PIL import Image
    Image.open(a.grid).convert('L').save(a.grid, optimize=True)  # grey images: one channel keeps the file small
    print(f'wrote {a.grid}')


if __name__ == '__main__':
    sys.exit(main())
