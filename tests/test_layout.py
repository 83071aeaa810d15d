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
