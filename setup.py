"""Packaging for ddpm_from_scratch: everything is read from settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

for key in 'version description keywords author author_email'.split():
    assert key in cfg, f'settings.ini is missing `{key}`'

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable']
lic = licenses[cfg.get('license', 'apache2')]

def _reqs(key):
    "Requirements listed under `key`, split like a shell would (so `nbdev==2.4.14 execnb<0.2` works)."
    return shlex.split(cfg.get(key, ''))

from pathlib import Path
long_description = Path('README.md').read_text(encoding='utf-8') if Path('README.md').exists() else cfg['description']

setuptools.setup(
    name=cfg['lib_name'].replace('_', '-'),
    version=cfg['version'],
    description=cfg['description'],
    long_description=long_description,
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic[0],
    url=cfg['git_url'],
    classifiers=[f'Development Status :: {statuses[int(cfg["status"])]}',
                 f'Intended Audience :: {cfg["audience"].title()}',
                 f'License :: {lic[1]}',
                 f'Natural Language :: {cfg["language"].title()}',
                 'Programming Language :: Python :: 3'],
    packages=setuptools.find_packages(exclude=['tests', 'tests.*']),
    include_package_data=True,
    package_data={cfg['lib_name']: ['assets/*']},
    python_requires='>=' + cfg['min_python'],
    install_requires=_reqs('requirements'),
    extras_require={'dev': _reqs('dev_requirements'), 'docs': _reqs('docs_requirements')},
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d'],
    },
    zip_safe=False,
)
