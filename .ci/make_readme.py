"""Write README.md from nbs/index.ipynb: its markdown cells, in order (nbdev_readme needs Quarto, which we avoid).

A code cell flagged `#| hide` is left out; one flagged `#| echo: false` contributes its saved output (a table the
notebook computes from `bench/results/`), not its code. Links relative to `nbs/` are made relative to the root.

Run `python .ci/make_readme.py`; `--check` exits 1 when README.md is out of date instead of writing it."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
parts = []
def output_text(cell)->str:
    "The saved output of a code cell: its markdown if it has some, else its plain text."
    for o in cell.get('outputs', []):
        data = o.get('data', {})
        for kind in ('text/markdown', 'text/plain'):
            if kind in data: return ''.join(data[kind]).strip()
    sys.exit("nbs/index.ipynb has an `echo: false` cell without output: run `python .ci/run_notebooks.py nbs/index.ipynb`")

for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src or src.startswith('#| hide'): continue
    if cell['cell_type'] == 'markdown': parts.append(src.replace('](images/', '](nbs/images/').replace('](../', ']('))
    elif '#| echo: false' in src: parts.append(output_text(cell))
    else: parts.append(f'```python\n{src}\n```')
text = '<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->\n\n'
text += '\n\n'.join(parts) + '\n'
readme = root/'README.md'
if '--check' in sys.argv:
    if not readme.exists() or readme.read_text(encoding='utf-8') != text:
        sys.exit('README.md is out of date: run `python .ci/make_readme.py` and commit it.')
else: readme.write_text(text, encoding='utf-8')
