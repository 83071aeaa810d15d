"""Build the course website from the notebooks' saved outputs, offline, with Sphinx and MyST-NB.

    python docs/build.py                # writes the site to _site/ (open _site/index.html, or serve the folder)
    python docs/build.py --out DIR      # somewhere else

The notebooks are not run: each page shows the outputs saved with its notebook. Before Sphinx reads them, every
notebook is copied into a staging folder with nbdev's directives applied: `#| hide` cells and the `#| default_exp`
cell are dropped, `#| echo: false` cells keep only their output, and the `#|` lines themselves are removed.
The API reference documents every name each module exports. Math is rendered by a local copy of MathJax
(from the `sphinx-mathjax-offline` package), so the site makes no request outside itself.
"""
import argparse, importlib, inspect, json, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS = ROOT / 'nbs', ROOT / 'docs'
DIRECTIVE = re.compile(r'^\s*#\|\s*(.*)$')
LINKS = {'../bench/README.md': 'results.md'}  # links that leave nbs/ in the repository, and their page in the site


def directives(src:str)->dict:
    "The `#| name: value` lines at the top of a code cell: {'hide': '', 'echo:': 'false', ...}."
    out = {}
    for line in src.splitlines():
        m = DIRECTIVE.match(line)
        if not m:
            if line.strip(): break
            continue
        name, _, value = m.group(1).strip().partition(' ')
        out[name] = value.strip()
    return out


def strip_directives(src:str)->str:
    "`src` without its leading `#|` lines."
    lines = src.splitlines()
    while lines and (DIRECTIVE.match(lines[0]) or not lines[0].strip()): lines.pop(0)
    return '\n'.join(lines)


def clean_markdown(md:str)->str:
    "Markdown as Sphinx should read it: Quarto-only attributes dropped, links to the repository's other files mapped to site pages."
    md = re.sub(r'\)\{target=[^}]*\}', ')', md)
    for old, new in LINKS.items(): md = md.replace(f']({old})', f']({new})')
    return md


def stage_notebook(src:Path, dst:Path):
    "Copy notebook `src` to `dst` with nbdev's directives applied (see the module docstring)."
    nb = json.loads(src.read_text())
    cells = []
    for i, c in enumerate(nb['cells']):
        c['id'] = f'cell{i}'  # nbdev_clean drops cell ids; nbformat 5 wants them
        text = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            c['source'] = clean_markdown(text)
        elif c['cell_type'] == 'code':
            d = directives(text)
            if 'hide' in d or 'default_exp' in d: continue
            c['source'] = strip_directives(text)
            tags = c.setdefault('metadata', {}).setdefault('tags', [])
            if d.get('echo:') == 'false': tags.append('remove-input')
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md is not None:  # show_doc's output opens with a rule, which docutils allows only between sections
                    o['data']['text/markdown'] = re.sub(r'^\s*---\s*\n', '', clean_markdown(''.join(md)))
        cells.append(c)
    nb['cells'] = cells
    nb.setdefault('metadata', {})['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    dst.write_text(json.dumps(nb))


def api_page(modules:list)->str:
    "A page documenting every exported name of each module, in the course's order."
    parts = ['# API reference\n', 'Every name each module exports, with its signature and docstring. '
             'The notebook that writes a module explains it, with examples.\n']
    for nb, mod in modules:
        m = importlib.import_module(f'ddpm_from_scratch.{mod}')
        rst = [f'.. automodule:: ddpm_from_scratch.{mod}', '   :members:', '   :undoc-members:', '']
        for name in m.__all__:  # constants: autodoc's `members` lists functions and classes only
            o = getattr(m, name)
            if o is None or callable(o) or inspect.ismodule(o): continue
            short = isinstance(o, (str, int, float, tuple)) and len(repr(o)) < 80
            rst += [f'.. autodata:: ddpm_from_scratch.{mod}.{name}'] + ([] if short else ['   :no-value:']) + ['']
        parts.append(f'## `ddpm_from_scratch.{mod}`\n\nWritten in [{nb}]({nb}.ipynb).\n\n```{{eval-rst}}\n' + '\n'.join(rst) + '```\n')
    return '\n'.join(parts)


def course()->list:
    "The numbered notebooks in order, with the module each exports (or None)."
    out = []
    for nb in sorted(NBS.glob('[0-9][0-9]_*.ipynb')):
        mod = None
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'#\|\s*default_exp\s+(\w+)', ''.join(c['source']))
            if m: mod = m.group(1); break
        out.append((nb.stem, mod))
    return out


def mathjax_dir()->Path:
    "MathJax 3 as the `sphinx-mathjax-offline` package ships it."
    from importlib.metadata import distribution
    return Path(distribution('sphinx-mathjax-offline').locate_file('sphinx-mathjax-offline/static/mathjax'))


def stage(src_dir:Path):
    "Fill `src_dir` with what Sphinx reads: the staged notebooks, their images, the results page, the API page, conf.py."
    if src_dir.exists(): shutil.rmtree(src_dir)
    src_dir.mkdir(parents=True)
    nbs = course()
    for name, _ in nbs: stage_notebook(NBS / f'{name}.ipynb', src_dir / f'{name}.ipynb')
    stage_notebook(NBS / 'index.ipynb', src_dir / 'index.ipynb')
    index = json.loads((src_dir / 'index.ipynb').read_text())
    toc = '\n'.join([f'{n}' for n, _ in nbs] + ['results', 'api'])
    index['cells'].append(dict(cell_type='markdown', id='toctree', metadata={}, source=f'```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{toc}\n```\n'))
    (src_dir / 'index.ipynb').write_text(json.dumps(index))
    shutil.copytree(NBS / 'images', src_dir / 'images')
    from PIL import Image  # the favicon: the first real image of the front picture
    Image.open(NBS / 'images' / 'front.png').crop((72, 2, 136, 66)).save(src_dir / 'favicon.png')
    results = (ROOT / 'bench' / 'README.md').read_text()
    (src_dir / 'results.md').write_text(results.replace('# Benchmarks', '# Results and benchmarks', 1))
    (src_dir / 'api.md').write_text(api_page([(n, m) for n, m in nbs if m]))
    shutil.copytree(mathjax_dir(), src_dir / '_mathjax' / 'mathjax')
    shutil.copy(DOCS / 'conf.py', src_dir / 'conf.py')


def build(out:Path, src_dir:Path=None, quiet:bool=True)->Path:
    "Stage the sources and run Sphinx; returns the folder holding the site."
    src_dir = Path(src_dir or ROOT / '_docs_src')
    stage(src_dir)
    out = Path(out)
    if out.exists(): shutil.rmtree(out)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-j', 'auto', '-W', '--keep-going', str(src_dir), str(out)]
    if quiet: cmd.insert(3, '-q')
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode: raise SystemExit(f'sphinx-build failed (exit {r.returncode}); its warnings are above')
    (out / '.nojekyll').touch()  # GitHub Pages: serve folders that start with an underscore
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT / '_site'), help='folder for the site (replaced)')
    ap.add_argument('--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args()
    t0 = time.time()
    site = build(Path(a.out), quiet=not a.verbose)
    print(f'site written to {site} in {time.time() - t0:.0f} s: open {site / "index.html"}')
