"""Run the whole test suite: pytest on `tests/`, then `nbdev_test` on every notebook in `nbs/`.

Prints one closing line `N passed, N failed` that counts pytest tests and notebooks together, and exits
non-zero if anything failed. Extra arguments go to nbdev_test (e.g. `--flags slow` on a GPU machine)."""
import os, re, subprocess, sys, tempfile, time
import xml.etree.ElementTree as ET
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def run_pytest():
    "Run pytest on tests/; return (passed, failed) read from its JUnit report."
    with tempfile.TemporaryDirectory() as d:
        report = Path(d)/'pytest.xml'
        # two workers (pytest-xdist), one test module each at a time: module fixtures are built once
        workers = ['-n', os.environ.get('PYTEST_WORKERS', '2'), '--dist', 'loadscope']
        rc = subprocess.call([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', *workers, 'tests',
                              f'--junitxml={report}'], cwd=root)
        if not report.exists(): return 0, 1  # pytest itself broke (e.g. a collection crash): count it as a failure
        suites = ET.parse(report).getroot().iter('testsuite')
        total = failed = skipped = 0
        for s in suites:
            total += int(s.get('tests', 0)); skipped += int(s.get('skipped', 0))
            failed += int(s.get('failures', 0)) + int(s.get('errors', 0))
    if rc not in (0, 1, 5): failed = max(failed, 1)  # interrupted or internal error
    return total - failed - skipped, failed

def notebooks():
    "The notebooks nbdev_test runs: every .ipynb under nbs/ not starting with '_' or '.'."
    from nbdev.doclinks import nbglob
    return sorted(Path(f).name for f in nbglob(root/'nbs', as_path=True))

def run_nbdev_test(extra):
    "Run nbdev_test on all notebooks; return (passed, failed)."
    names = notebooks()
    # Two notebooks run at once; one thread each avoids the two processes' thread pools stalling each other.
    env = {'OMP_NUM_THREADS': '1', **os.environ}
    proc = subprocess.run(['nbdev_test', '--n_workers', os.environ.get('NBDEV_TEST_WORKERS', '2'), '--timing', *extra],
                          cwd=root, capture_output=True, text=True, env=env)
    sys.stdout.write(proc.stdout); sys.stderr.write(proc.stderr)
    if proc.returncode == 0: return len(names), 0
    failed = set(re.findall(r'^\t(\S+\.ipynb)\s*$', proc.stderr, flags=re.M)) & set(names)
    n_failed = max(len(failed), 1)
    return len(names) - n_failed, n_failed

if __name__ == '__main__':
    t0 = time.time()
    p1, f1 = run_pytest()
    t1 = time.time()
    p2, f2 = run_nbdev_test(sys.argv[1:])
    t2 = time.time()
    print(f'pytest: {p1} passed, {f1} failed ({t1-t0:.0f}s); notebooks: {p2} passed, {f2} failed ({t2-t1:.0f}s)')
    if os.environ.get('CI_START'): print(f'CI wall time: {time.time() - float(os.environ["CI_START"]):.0f}s')
    print(f'{p1+p2} passed, {f1+f2} failed')
    sys.exit(1 if f1 + f2 else 0)
