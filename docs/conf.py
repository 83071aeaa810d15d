# Sphinx configuration of the course website. `python docs/build.py` copies this file next to the staged notebooks.
import re

import ddpm_from_scratch

project = 'ddpm_from_scratch'
author = 'ddpm_from_scratch developers'
copyright = '2026 onwards, ddpm_from_scratch developers'
release = version = ddpm_from_scratch.__version__

extensions = ['myst_nb', 'sphinx.ext.autodoc', 'sphinx.ext.mathjax']
root_doc = 'index'
exclude_patterns = ['_build', '_mathjax', '**.ipynb_checkpoints']

# The notebooks are shown with the outputs saved in them, never run here.
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'                # show_doc's outputs are markdown, with math
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence']
myst_heading_anchors = 3
nb_merge_streams = True

# API reference: signatures and docstrings; backticks in a docstring mean code, as in the notebooks.
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
default_role = 'code'

# MathJax 3 (SVG output: no web fonts to fetch) from the sphinx-mathjax-offline package, copied into the site by
# docs/build.py: no request leaves the site.
mathjax_path = 'mathjax/tex-svg.js'
mathjax3_config = {'svg': {'fontCache': 'global'}}

html_theme = 'furo'
html_title = 'DDPM from scratch'
html_favicon = 'favicon.png'
html_static_path = ['_mathjax']
html_show_sourcelink = False
html_theme_options = {'navigation_with_keys': True}


def _plain_docstring(app, what, name, obj, options, lines):
    "The docstrings are markdown-ish one-liners: outside backticks, `*`, `|` and a word-final `_` are text, not reST markup."
    if what == 'data' and getattr(obj, '__doc__', None) == type(obj).__doc__: lines.clear(); return  # a dict's, not ours
    for i, line in enumerate(lines):
        parts = line.split('`')
        for j in range(0, len(parts), 2): parts[j] = re.sub(r'([*|]|(?<=\w)_(?!\w))', r'\\\1', parts[j])
        lines[i] = '`'.join(parts)


def setup(app): app.connect('autodoc-process-docstring', _plain_docstring)
