"""The course website: built by `docs/build.py` from the notebooks' saved outputs, then read in a real browser.

Chromium is driven through Playwright over the site served on localhost. Every page must load with no console error,
no failed request and no request leaving localhost; every image must decode; math must be rendered; every internal
link must resolve; the sidebar must reach every page. Screenshots of the landing page and of one lesson go to
`$DDPM_DOCS_SHOTS` (a temporary folder if unset). Without Sphinx or without a browser the suite skips, saying why.
"""
import functools, http.server, importlib.util, json, os, re, shutil, threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON = '12_ddim'  # the lesson page that must show its sample figure, and whose screenshot is kept


def _load_build():
    spec = importlib.util.spec_from_file_location('docs_build', ROOT / 'docs' / 'build.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _missing(*mods):
    return [m for m in mods if importlib.util.find_spec(m) is None]


def test_staging_applies_nbdev_directives(tmp_path):
    "Staging drops `#| hide` and `#| default_exp` cells, hides the input of `#| echo: false` cells, strips `#|` lines."
    build = _load_build()
    nb = dict(nbformat=4, nbformat_minor=5, metadata={}, cells=[
        dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source='#| default_exp x'),
        dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source='#| hide\nimport secret'),
        dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source='#| export\ndef f(): pass'),
        dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source='#| echo: false\nprint(1)'),
        dict(cell_type='markdown', metadata={}, source='See [the results](../bench/README.md).')])
    (tmp_path / 'a.ipynb').write_text(json.dumps(nb))
    build.stage_notebook(tmp_path / 'a.ipynb', tmp_path / 'b.ipynb')
    cells = json.loads((tmp_path / 'b.ipynb').read_text())['cells']
    assert [c['source'] for c in cells] == ['def f(): pass', 'print(1)', 'See [the results](results.md).']
    assert cells[1]['metadata']['tags'] == ['remove-input'] and all(c['id'] for c in cells)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    missing = _missing('sphinx', 'myst_nb', 'furo')
    if missing: pytest.skip(f"docs build skipped: {', '.join(missing)} not installed (pip install -e '.[docs]')")
    tmp = tmp_path_factory.mktemp('docs')
    return _load_build().build(tmp / 'site', src_dir=tmp / 'src')


def _pages(site:Path)->list:
    return sorted(p.name for p in site.glob('*.html'))


def _course(site:Path)->list:
    "The pages a reader reaches from the sidebar: the notebooks, the results page and the API reference."
    return ['index.html'] + [f'{p.stem}.html' for p in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'))] + ['results.html', 'api.html']


def test_site_has_every_page(site):
    pages = set(_pages(site))
    assert set(_course(site)) <= pages, set(_course(site)) - pages
    assert (site / 'searchindex.js').exists() and (site / '.nojekyll').exists()
    assert (site / '_static' / 'mathjax' / 'tex-svg.js').exists()


def test_api_reference_documents_every_export(site):
    "Every name in each module's `__all__` has an entry on the API page."
    html = (site / 'api.html').read_text()
    missing = []
    for _, mod in _load_build().course():
        if mod is None: continue
        m = importlib.import_module(f'ddpm_from_scratch.{mod}')
        missing += [f'{mod}.{n}' for n in m.__all__
                    if getattr(m, n) is not None and f'id="ddpm_from_scratch.{mod}.{n}"' not in html]  # None: patched onto a class
    assert not missing, missing


@pytest.fixture(scope='module')
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def _chromium():
    for name in (os.environ.get('CHROMIUM'), 'chromium', 'chromium-browser', 'google-chrome'):
        if name and shutil.which(name): return shutil.which(name)


@pytest.fixture(scope='module')
def browser(server):
    if _missing('playwright'): pytest.skip("browser tests skipped: the playwright package is not installed (pip install -e '.[docs]')")
    exe = _chromium()
    if exe is None: pytest.skip('browser tests skipped: no Chromium found (apt-get install chromium, or set $CHROMIUM)')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


# After load: every image eager and decoded, MathJax finished; then what the page shows.
_SETTLE = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const main = document.querySelector('article') || document.body;
  const prose = main.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .highlight').forEach(e => e.remove());
  return {
    images: imgs.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth})),
    math: main.querySelectorAll('mjx-container').length,
    text: prose.innerText,
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    sidebar: [...document.querySelectorAll('.sidebar-tree a')].map(a => a.getAttribute('href')),
  };
}"""


@pytest.fixture(scope='module')
def visits(browser, server, site):
    "Visit every page once; per page: console errors, failed or non-local requests, and what `_SETTLE` returned."
    shots = Path(os.environ.get('DDPM_DOCS_SHOTS') or site.parent / 'shots'); shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={'width': 1200, 'height': 900})
    out = {}
    for name in _pages(site):
        rec = dict(errors=[], failed=[], foreign=[])
        page.on('console', lambda m, r=rec: r['errors'].append(m.text) if m.type == 'error' else None)
        page.on('pageerror', lambda e, r=rec: r['errors'].append(str(e)))
        page.on('requestfailed', lambda q, r=rec: r['failed'].append(q.url))
        page.on('response', lambda s, r=rec: r['failed'].append(f'{s.status} {s.url}') if s.status >= 400 else None)
        page.on('request', lambda q, r=rec: r['foreign'].append(q.url) if not q.url.startswith((server, 'data:', 'blob:')) else None)
        page.goto(server + name, wait_until='networkidle')
        rec.update(page.evaluate(_SETTLE))
        if name in ('index.html', f'{LESSON}.html'): page.screenshot(path=str(shots / name.replace('.html', '.png')), full_page=False)
        out[name] = rec
        page.close(); page = browser.new_page(viewport={'width': 1200, 'height': 900})
    page.close()
    print(f'\nscreenshots of the landing page and {LESSON} in {shots}')
    return out


def test_pages_load_cleanly(visits):
    bad = {n: {k: v[k] for k in ('errors', 'failed', 'foreign') if v[k]} for n, v in visits.items()}
    assert not any(bad.values()), {n: v for n, v in bad.items() if v}


def test_images_decode(visits):
    bad = {n: [i['src'] for i in v['images'] if not i['width']] for n, v in visits.items()}
    assert not any(bad.values()), {n: v for n, v in bad.items() if v}


def _has_math(name:str)->bool:
    "Whether the notebook behind page `name` writes math in its markdown."
    nb = ROOT / 'nbs' / name.replace('.html', '.ipynb')
    if not nb.exists(): return False
    return any('$' in ''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown')


def test_math_is_rendered(visits):
    with_math = [n for n in visits if _has_math(n)]
    assert len(with_math) >= 10, with_math
    raw = re.compile(r'\$[^$\s][^$\n]*\$|\\\(|\\\[')
    bad = {n: raw.findall(visits[n]['text'])[:3] for n in with_math if raw.search(visits[n]['text']) or not visits[n]['math']}
    assert not bad, bad


def test_internal_links_resolve(visits, site):
    bad = []
    for name, v in visits.items():
        for href in v['links']:
            u = urlparse(urljoin(f'http://x/{name}', href))
            if href.startswith(('http:', 'https:', 'mailto:')) or u.netloc != 'x': continue
            target = site / u.path.lstrip('/')
            if target.is_dir(): target = target / 'index.html'
            if not target.exists(): bad.append(f'{name}: {href}'); continue
            if u.fragment and target.suffix == '.html' and f'id="{u.fragment}"' not in target.read_text():
                bad.append(f'{name}: {href} (no such anchor)')
    assert not bad, bad[:20]


def test_sidebar_reaches_every_page(visits, site):
    reached = {urlparse(h).path for h in visits['index.html']['sidebar']}
    assert set(_course(site)) - {'index.html'} <= reached, set(_course(site)) - reached


def test_landing_page_and_lesson_show_their_figures(visits):
    front = [i for i in visits['index.html']['images'] if i['src'].endswith('front.png')]
    assert front and front[0]['width'] > 500
    lesson = [i for i in visits[f'{LESSON}.html']['images'] if i['width']]
    assert len(lesson) >= 5, lesson


def test_search_finds_a_lesson(browser, server):
    "Sphinx's search runs in the page, offline: searching for `noisify` lists the notebook that writes it."
    page = browser.new_page()
    page.goto(server + 'search.html?q=noisify', wait_until='networkidle')
    page.wait_for_selector('#search-results li', timeout=15_000)
    hits = page.eval_on_selector_all('#search-results li a', 'els => els.map(a => a.getAttribute("href"))')
    page.close()
    assert any(h.startswith('06_process.html') for h in hits), hits


def test_site_works_from_disk(browser, site):
    "Opened as files, without a server, the relative links still lead from page to page."
    page = browser.new_page()
    page.goto((site / 'index.html').as_uri())
    page.click('.sidebar-tree a[href="12_ddim.html"]')
    page.wait_for_load_state()
    assert page.url.endswith('12_ddim.html') and 'DDIM' in page.title()
    page.close()
