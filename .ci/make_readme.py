"""Write README.md from nbs/index.ipynb: its markdown cells, in order (nbdev_readme needs Quarto, which we avoid).

Run `python .ci/make_readme.py`; `--check` exits 1 when README.md is out of date instead of writing it."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src or src.startswith('#| hide'): continue
    parts.append(src if cell['cell_type'] == 'markdown' else f'```python\n{src}\n```')
text = '<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->\n\n'
text += '\n\n'.join(parts) + '\n'
readme = root/'README.md'
if '--check' in sys.argv:
    if not readme.exists() or readme.read_text(encoding='utf-8') != text:
        sys.exit('README.md is out of date: run `python .ci/make_readme.py` and commit it.')
else: readme.write_text(text, encoding='utf-8')
