"""The notebooks as a reader sees them on GitHub: saved from one clean top-to-bottom run, with figures, and small.

`.ci/run_notebooks.py` runs a notebook and records each code cell's place in the run in its metadata (`run`), since
`nbdev_clean` removes Jupyter's execution counts; these tests read that record."""
import copy, json, re, shutil, subprocess, sys
from pathlib import Path

import pytest

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / '.ci'))
from run_notebooks import directives, tst_flags  # noqa: E402

NBS = sorted((root / 'nbs').glob('[0-9]*.ipynb'))
MAX_NB_MB, MAX_ALL_MB = 1.5, 15.

def load(path): return json.loads(path.read_text())
def code_cells(nb): return [c for c in nb['cells'] if c['cell_type'] == 'code']

def check_order(nb)->list:
    "What is wrong with the run record of `nb` (empty if it was saved from one run, in order, with no cell skipped)."
    problems, expected, tf = [], 1, tst_flags()
    for i, c in enumerate(code_cells(nb)):
        run, d = c['metadata'].get('run'), directives(''.join(c['source']))
        if isinstance(run, int) and not isinstance(run, bool):
            if run != expected: problems.append(f"code cell {i}: run {run}, expected {expected}")
            expected = run + 1
        elif run == 'eval: false' and d.get('eval:', [''])[0].lower() == 'false': pass
        elif run in tf and run in d:  # a flagged cell that kept the outputs of its real run
            pass
        else: problems.append(f"code cell {i}: no run record ({run!r})")
    return problems

def images(nb)->int:
    return sum('image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {})
               for c in code_cells(nb) for o in c.get('outputs', []))

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.stem)
def test_saved_in_one_run_in_order(path):
    assert check_order(load(path)) == [], f"{path.name}: run `python .ci/run_notebooks.py {path.relative_to(root)}`"

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.stem)
def test_lesson_shows_a_figure(path):
    assert images(load(path)) >= 1, f"{path.name} is saved without a single figure"

def test_notebooks_are_small():
    sizes = {p.name: p.stat().st_size / 1e6 for p in NBS}
    assert {n: s for n, s in sizes.items() if s > MAX_NB_MB} == {}
    assert sum(p.stat().st_size for p in (root / 'nbs').rglob('*') if p.is_file()) / 1e6 < MAX_ALL_MB

def test_order_check_catches_a_skipped_or_rerun_cell():
    nb = {'cells': [{'cell_type': 'code', 'source': ['x = 1'], 'metadata': {'run': k}, 'outputs': []} for k in (1, 2, 3)]}
    assert check_order(nb) == []
    bad = copy.deepcopy(nb); bad['cells'][1]['metadata']['run'] = 5       # re-run out of order
    assert check_order(bad) != []
    bad = copy.deepcopy(nb); del bad['cells'][2]['metadata']['run']       # added after the run
    assert check_order(bad) != []
    slow = copy.deepcopy(nb); slow['cells'][1].update(source=['#| slow\n', 'x = 2'], metadata={'run': 'slow'})
    slow['cells'][2]['metadata']['run'] = 2
    assert check_order(slow) == []                                         # a slow cell keeps its real run's outputs
    slow['cells'][1]['source'] = ['x = 2']                                 # ... but only a cell flagged slow
    assert check_order(slow) != []

def test_nbdev_clean_keeps_outputs_and_run_record(tmp_path):
    src = next(p for p in NBS if images(load(p)))
    shutil.copytree(root / 'nbs', tmp_path / 'nbs'); shutil.copy(root / 'settings.ini', tmp_path)
    nb = tmp_path / 'nbs' / src.name
    subprocess.run(['nbdev_clean', '--fname', str(nb)], cwd=tmp_path, check=True, capture_output=True)
    record = lambda p: [(c['metadata'].get('run'), c['outputs']) for c in code_cells(load(p))]
    assert record(nb) == record(src) and images(load(nb)) >= 1


PROCESS = re.compile(r"\b[Ii]ssues? #?\d+|\bthe issue(?:'s)?\b|\bcommit\s+[0-9a-f]{7,40}\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"
                     r"|~/|/home/|/root/|/work/|/Users/|\bsessions?\b|load average|by mistake|time ran out")

MACHINE_PATH = re.compile(r'/tmp/|/home/|/root/|/work/|/usr/|/Users/')  # also in code and in saved outputs

def process_talk(text:str)->list:
    "Phrases that speak of how the project was made rather than of the product: issue numbers, hashes, home paths, sessions."
    return [text[max(0, m.start() - 30):m.end() + 30].replace('\n', ' ') for m in PROCESS.finditer(text)]

def test_process_talk_is_found():
    assert process_talk('see issue 11 and commit f284d84 in ~/runs') and process_talk('the session ran out')
    assert not process_talk('a decade of effaced 1,998 steps; FID 4.83 at N=2048 with seed 0')

def test_the_product_speaks_only_of_itself():
    """No issue numbers, commit hashes, machine or home paths or accounts of the work in lessons (their prose, code and
    saved outputs), README or bench/README.md."""
    found = {}
    for p in [*sorted((root / 'nbs').glob('*.ipynb'))]:
        for i, c in enumerate(load(p)['cells']):
            src = ''.join(c['source'])
            text = src if c['cell_type'] == 'markdown' else '\n'.join(l.split('#', 1)[1] for l in src.splitlines() if '#' in l)
            shown = ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) for o in c.get('outputs', []))
            both = src + '\n' + shown
            hits = process_talk(text) + [both[max(0, m.start() - 30):m.end() + 30] for m in MACHINE_PATH.finditer(both)]
            if hits: found[f'{p.name} cell {i}'] = hits
    for f in ('README.md', 'bench/README.md'):
        if hits := process_talk((root / f).read_text()): found[f] = hits
    assert found == {}, found
