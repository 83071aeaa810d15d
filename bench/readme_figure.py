"""The README's picture: one real test image of each class, above two rows that the shipped model draws when asked
for each class (guided, w=3, DDIM-50 with the command line's guided settings).

    python bench/readme_figure.py        # writes nbs/images/front.png (the README and the docs' landing page show it)
"""
import argparse
from pathlib import Path

import torch

from ddpm_from_scratch.guidance import balanced_real, guided_generate
from ddpm_from_scratch.ode import SampleConfig
from ddpm_from_scratch.train import build_schedule, load_pretrained, save_grid

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(ROOT / 'nbs' / 'images' / 'front.png'), help='the PNG to write')
    p.add_argument('--rows', type=int, default=2, help='rows of generated images, one image per class in each')
    p.add_argument('--w', type=float, default=3., help='guidance scale')
    p.add_argument('--seed', type=int, default=0, help='seed of the starting noise')
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    model, cfg = load_pretrained()
    s = SampleConfig.default(a.w)
    classes = torch.arange(cfg.n_classes).repeat(a.rows)
    imgs = guided_generate(model, build_schedule(cfg), classes, a.w, s.sampler, a.seed, progress=False,
                           **s.options())
    real, _ = balanced_real(1, 'test', cfg.n_classes)
    save_grid(torch.cat([real, imgs]), a.out, ncols=cfg.n_classes, row_labels=['real'] + ['generated'] * a.rows)
    print(f"wrote {a.out}: {cfg.n_classes} classes, 1 real row, {a.rows} generated rows (w={a.w:g}, {s.sampler}-{s.steps})")


if __name__ == '__main__': main()
