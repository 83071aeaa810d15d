"The package's layout rules: no import cycles between modules, no hidden imports without a reason, complete module docstrings."
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / 'ddpm_from_scratch'
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def package_imports(tree:ast.AST, top_level_only:bool):
    "The names of this package's modules imported in `tree` (at module level only, or anywhere)."
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            if n.level == 1: mods = [n.module] if n.module else [a.name for a in n.names]
            elif (n.module or '').startswith('ddpm_from_scratch'):
                rest = n.module.split('.')[1:]
                mods = rest[:1] if rest else [a.name for a in n.names]
            else: mods = []
            out |= {m.split('.')[0] for m in mods if m}
        elif isinstance(n, ast.Import):
            out |= {a.name.split('.')[1] for a in n.names if a.name.startswith('ddpm_from_scratch.')}
    return out & set(MODULES)


def graph(top_level_only=False):
    return {m: package_imports(ast.parse((PKG / f'{m}.py').read_text()), top_level_only) for m in MODULES}


def find_cycle(g):
    "A list of modules forming an import cycle, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 1; stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1: return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = 2; stack.pop()
    for m in g:
        if m not in state and (c := visit(m)): return c


def test_find_cycle_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycles():
    "No two modules import each other, directly or through others (imports inside functions included)."
    assert find_cycle(graph()) is None, find_cycle(graph())


def test_imports_inside_functions_have_a_reason():
    "An import inside a function must carry a comment on its line saying why (e.g. an optional heavy dependency)."
    bad = []
    for m in MODULES:
        src = (PKG / f'{m}.py').read_text()
        lines = src.splitlines()
        for fn in ast.walk(ast.parse(src)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for n in ast.walk(fn):
                if isinstance(n, (ast.Import, ast.ImportFrom)) and '#' not in lines[n.lineno - 1]:
                    bad.append(f'{m}.py:{n.lineno}: {lines[n.lineno - 1].strip()}')
    assert not bad, bad


@pytest.mark.parametrize('mod', MODULES)
def test_module_docstring_is_complete(mod):
    "Each module's docstring (its notebook's one-line summary) is a whole sentence, not cut off mid-way."
    doc = ast.get_docstring(ast.parse((PKG / f'{mod}.py').read_text()))
    assert doc, f'{mod}.py has no docstring'
    assert doc.rstrip().endswith(('.', ')', '`')), f'{mod}.py docstring looks cut off: {doc[-60:]!r}'


def test_notebook_import_cells_hold_only_imports():
    "nbdev's doc build runs import cells on their own: a cell with an import statement must hold nothing else."
    import json
    bad = []
    for nb in sorted((PKG.parent / 'nbs').glob('*.ipynb')):
        for i, cell in enumerate(json.loads(nb.read_text())['cells']):
            if cell['cell_type'] != 'code': continue
            src = '\n'.join(l for l in ''.join(cell['source']).splitlines() if not l.lstrip().startswith('#|'))
            if src.strip() == 'import nbdev; nbdev.nbdev_export()': continue  # nbdev's own closing cell
            try: body = ast.parse(src).body
            except SyntaxError: continue  # cell magics
            is_imp = [isinstance(n, (ast.Import, ast.ImportFrom)) for n in body]
            if any(is_imp) and not all(is_imp): bad.append(f'{nb.name} cell {i}: {src[:60]!r}')
    assert not bad, bad


def notebook_modules()->dict:
    "For each numbered notebook: its number, the module it exports (or None) and the package modules its cells import."
    import json, re
    out = {}
    for nb in sorted((PKG.parent / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        cells = [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
        exp = next((m.group(1) for s in cells for m in [re.search(r'^#\|\s*default_exp\s+(\w+)', s, re.M)] if m), None)
        imports = set()
        for s in cells:
            try: tree = ast.parse('\n'.join(l for l in s.splitlines() if not l.lstrip().startswith(('%', '!'))))
            except SyntaxError: continue
            imports |= package_imports(tree, top_level_only=False)
        out[nb.stem] = dict(number=int(nb.stem[:2]), exports=exp, imports=imports - {exp})
    return out


def later_imports(nbs:dict)->list:
    "Every `(notebook, module, exporting notebook)` where a notebook imports a module that a later notebook exports."
    home = {d['exports']: (d['number'], name) for name, d in nbs.items() if d['exports']}
    return sorted((name, m, home[m][1]) for name, d in nbs.items() for m in d['imports'] if m in home and home[m][0] > d['number'])


def test_later_imports_are_found():
    nbs = {'00_a': dict(number=0, exports='a', imports={'b'}), '01_b': dict(number=1, exports='b', imports={'a'})}
    assert later_imports(nbs) == [('00_a', 'b', '01_b')]


def test_notebooks_read_in_order():
    "A notebook imports only modules exported by itself or by an earlier notebook, so the course reads front to back."
    nbs = notebook_modules()
    assert {d['exports'] for d in nbs.values() if d['exports']} == set(MODULES), "every module has its one notebook"
    assert later_imports(nbs) == []


def test_no_module_imports_the_command_line():
    "The command line is a thin layer for users: nothing in the package builds on it."
    assert [m for m, deps in graph().items() if 'cli' in deps] == []


def loaded_by(mod:str, names:list)->list:
    "Which of `names` are in `sys.modules` after importing `ddpm_from_scratch.mod` in a fresh interpreter."
    import subprocess, sys
    code = f"import sys, ddpm_from_scratch.{mod}; print([m for m in {names!r} if m in sys.modules])"
    return eval(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.slow
def test_samplers_import_light():
    "Importing the samplers (`ddim`, which imports `sampling` and `process`) loads neither the Learner, nor the training callback, nor diffusers."
    heavy = ['ddpm_from_scratch.learner', 'ddpm_from_scratch.ddpm', 'ddpm_from_scratch.train', 'diffusers']
    assert {'sampling', 'process'} <= graph()['ddim']
    assert loaded_by('ddim', heavy + ['ddpm_from_scratch.sampling']) == ['ddpm_from_scratch.sampling']  # the check can fail


@pytest.mark.slow
def test_command_line_starts_without_diffusers():
    "diffusers (seconds to import) is loaded only when its U-Net is built: not by the console scripts' module."
    assert loaded_by('cli', ['diffusers', 'ddpm_from_scratch.train']) == ['ddpm_from_scratch.train']
