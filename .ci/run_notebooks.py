"""Run notebooks top to bottom in a fresh kernel and save them with their outputs, as a reader should see them.

    python .ci/run_notebooks.py                          # every notebook in nbs/
    python .ci/run_notebooks.py nbs/05_ddpm_callback.ipynb nbs/06_noisify_sample.ipynb
    python .ci/run_notebooks.py --slow nbs/07_init.ipynb  # also run the `#| slow` cells (the real runs)

Every code cell is run in order, as `nbdev_test` runs it (in nbs/, same environment), except:
- cells flagged with one of settings.ini's `tst_flags` (`slow`, ...) unless that flag is given: they keep the outputs
  of their last real run, which is what the text quotes;
- cells with `#| eval: false`, which are never run.
Figures are saved as plain PNGs at a low dpi (not retina), to keep the notebooks small.

Jupyter's execution counts do not survive `nbdev_clean`, so each code cell records its place in the run in its
metadata instead: `"run": 1, 2, ...` for the cells run here, `"run": "<flag>"` for a flagged cell that kept its outputs,
`"run": "eval: false"` for cells never run. settings.ini's `allowed_cell_metadata_keys = run` keeps that through
`nbdev_clean`, and `tests/test_notebooks.py` checks it. A notebook whose run fails is not written.
"""
import argparse, os, subprocess, sys, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
DPI = 72  # dots per inch of saved figures: a 6x4 inch figure is 432x288 pixels

def directives(src:str)->dict:
    "The `#| name: value` lines at the top of a code cell, as nbdev reads them: {'slow': [], 'eval:': ['false'], ...}."
    from nbdev.process import extract_directives
    from execnb.nbio import mk_cell
    return extract_directives(mk_cell(src), remove=False)

def tst_flags()->set:
    from nbdev.config import get_config
    return set(get_config().get('tst_flags', '').split())

def run_notebook(path:Path, run_flags:set)->float:
    "Execute `path` and write it back with its outputs; returns the seconds it took. Raises on a failing cell."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb, flags, t0 = read_nb(path), tst_flags(), time.time()
    shell = CaptureShell(path, mpl_format='png')
    shell.run(f"import matplotlib; matplotlib.rcParams['figure.dpi'] = {DPI}")  # a setting, not part of the notebook
    os.chdir(path.parent)
    k = 0
    for cell in nb.cells:
        if cell.cell_type != 'code': continue
        d = directives(cell.source)
        skip = (flags & d.keys()) - run_flags
        if d.get('eval:', [''])[0].lower() == 'false': cell.metadata['run'] = 'eval: false'; continue
        if skip: cell.metadata['run'] = sorted(skip)[0]; continue
        k += 1
        cell.outputs = []  # execnb only writes outputs when there are some: a silent cell must not keep stale ones
        src = cell.source
        if src.rstrip().endswith(';'):  # execnb drops all of a cell's output, prints included, after a final ';'
            cell.source = src.rstrip()[:-1] + '\nNone'  # the same effect (no repr of the last value), prints kept
        try: shell.cell(cell)
        finally: cell.source = src
        if shell.exc:
            sys.stderr.write(shell.prettytb(fname=path) + '\n')
            raise RuntimeError(f"{path.name}: code cell {k} failed; notebook not written")
        cell.metadata['run'] = k
    write_nb(nb, path)
    subprocess.run(['nbdev_clean', '--fname', str(path)], check=True, cwd=root)
    return time.time() - t0

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('notebooks', nargs='*', type=Path)
    p.add_argument('--slow', action='store_true', help="also run the cells flagged `slow`")
    p.add_argument('--one', action='store_true', help="run the one notebook given in this process (used internally)")
    a = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg'); os.environ.setdefault('DDPM_CACHE_DIR', str(root / '.cache'))
    if a.one:
        n = a.notebooks[0].resolve()
        try: print(f"{n.name}: {run_notebook(n, {'slow'} if a.slow else set()):.0f}s, {n.stat().st_size / 1e6:.2f} MB", flush=True)
        except RuntimeError as e: sys.exit(str(e))
        sys.exit(0)
    nbs = [n.resolve() for n in a.notebooks] or sorted((root / 'nbs').glob('[0-9]*.ipynb'))
    # one process per notebook: each starts from a fresh interpreter, as a fresh kernel would
    failed = [n.name for n in nbs if subprocess.call([sys.executable, __file__, '--one', str(n)] + ['--slow'] * a.slow)]
    if failed: print(f"failed: {' '.join(failed)}")
    sys.exit(1 if failed else 0)
