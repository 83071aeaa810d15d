"Tests of classifier-free guidance: label dropout, the guidance formula, the batched guided prediction, the samplers."
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ddpm_from_scratch.ddpm import linear_schedule
from ddpm_from_scratch.guidance import (CFGDDPMCB, GuidedModel, cfg_eps, class_grid, drop_labels, guidance_table,
                                        guided_eps, guided_sample)
from ddpm_from_scratch.unet import UNet

torch.set_num_threads(1)


def small_unet(n_classes=10, seed=0):
    "A tiny class-conditioned U-Net whose zero-initialised convolutions are randomised, so every input matters."
    torch.manual_seed(seed)
    m = UNet(channels=(16, 32), n_res=1, img_size=16, attn_res=(), n_classes=n_classes)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and not mod.weight.any(): nn.init.normal_(mod.weight, std=0.1)
    return m.eval()


class CountingModel(nn.Module):
    "Wraps a model and records the batch size of every forward call."
    def __init__(self, m):
        super().__init__(); self.m, self.calls, self.n_classes, self.config = m, [], m.n_classes, m.config
    def forward(self, x, t, c=None):
        self.calls.append(len(x)); return self.m(x, t, c)


# ---- label dropout ----
@pytest.mark.parametrize('p', [0.1, 0.5])
def test_drop_labels_fraction(p):
    y = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    d = drop_labels(y, p, 10, generator=torch.Generator().manual_seed(1))
    frac = (d == 10).float().mean().item()
    sd = (p * (1 - p) / len(y)) ** 0.5
    assert abs(frac - p) < 4 * sd, (frac, p)
    kept = d != 10
    assert torch.equal(d[kept], y[kept])  # labels are dropped, never changed
    assert d.dtype == torch.long and d.shape == y.shape


def test_drop_labels_extremes_and_determinism():
    y = torch.arange(10).repeat(50)
    assert torch.equal(drop_labels(y, 0., 10), y)
    assert (drop_labels(y, 1., 10) == 10).all()
    a = drop_labels(y, 0.3, 10, generator=torch.Generator().manual_seed(5))
    b = drop_labels(y, 0.3, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_drop_labels_errors():
    with pytest.raises(ValueError, match='p_uncond must be a probability'): drop_labels(torch.tensor([1]), 1.5, 10)
    with pytest.raises(ValueError, match=r'lie in \[0, 9\]'): drop_labels(torch.tensor([10]), 0.1, 10)
    with pytest.raises(TypeError, match='integers'): drop_labels(torch.tensor([1.]), 0.1, 10)


# ---- the training callback ----
def test_cfg_callback_batches_and_fraction():
    cb = CFGDDPMCB(n_classes=10, p_uncond=0.2, n_steps=100)
    x, y = torch.rand(256, 1, 16, 16) * 2 - 1, torch.randint(0, 10, (256,))
    for _ in range(40):
        learn = SimpleNamespace(batch=(x, y), training=True)
        cb.before_batch(learn)
        (x_t, t, c), eps = learn.batch
        assert x_t.shape == eps.shape == x.shape and t.shape == c.shape == (256,)
        assert t.min() >= 0 and t.max() < 100
        assert torch.equal(c[c != 10], y[c != 10])
    sd = (0.2 * 0.8 / cb.n_labels) ** 0.5
    assert cb.n_labels == 40 * 256 and abs(cb.dropped_fraction - 0.2) < 4 * sd
    learn = SimpleNamespace(batch=(x, y), training=False)  # validation: labels kept
    cb.before_batch(learn)
    assert torch.equal(learn.batch[0][2], y)


def test_cfg_callback_errors():
    cb = CFGDDPMCB(n_classes=10)
    with pytest.raises(ValueError, match=r'\(images, labels\)'): cb.before_batch(SimpleNamespace(batch=(torch.zeros(2, 1, 8, 8),), training=True))
    with pytest.raises(ValueError, match='n_classes=5 but CFGDDPMCB has n_classes=10'):
        cb.before_fit(SimpleNamespace(model=SimpleNamespace(n_classes=5)))
    with pytest.raises(ValueError, match='p_uncond'): CFGDDPMCB(p_uncond=-0.1)


def test_cfg_callback_trains_with_the_learner():
    from ddpm_from_scratch.data import DataLoaders
    from ddpm_from_scratch.ddpm import fit_ddpm
    m = CountingModel(UNet(channels=(16, 32), n_res=1, img_size=16, attn_res=(), n_classes=10))
    x, y = torch.rand(64, 1, 16, 16) * 2 - 1, torch.randint(0, 10, (64,))
    cb = CFGDDPMCB(p_uncond=0.5, n_steps=50)
    fit_ddpm(m, DataLoaders.from_tensors((x, y), (x[:16], y[:16]), 16), 1, 1e-3, cb=cb, metrics=False, valid=False)
    assert m.calls == [16] * 4 and cb.n_labels == 64 and 0 < cb.n_dropped < 64


# ---- the guidance formula ----
def test_cfg_eps_formula():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert torch.equal(cfg_eps(u, c, 0.), u)
    assert torch.allclose(cfg_eps(u, c, 1.), c)
    assert torch.allclose(cfg_eps(u, c, 3.), 3 * c - 2 * u)
    assert torch.allclose(cfg_eps(u, c, 0.5), (u + c) / 2)


@pytest.mark.parametrize('w', [-1., float('nan'), float('inf'), True, '2'])
def test_bad_scales(w):
    with pytest.raises(ValueError, match='guidance scale w'): cfg_eps(torch.zeros(1), torch.zeros(1), w)


def test_guided_eps_equals_separate_calls():
    m = small_unet()
    x, t, c = torch.randn(4, 1, 16, 16), torch.tensor([5, 200, 600, 999]), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        e_c, e_u = m(x, t, c), m(x, t)
        assert (e_c - e_u).abs().max() > 1e-3  # the class matters, so the checks below can fail
        for skip in (True, False):
            assert torch.allclose(guided_eps(m, x, t, c, 1., skip=skip), e_c, atol=1e-5)  # w=1: the conditional model
            assert torch.allclose(guided_eps(m, x, t, c, 0., skip=skip), e_u, atol=1e-5)  # w=0: the unconditional one
        assert torch.allclose(guided_eps(m, x, t, c, 2.5), e_u + 2.5 * (e_c - e_u), atol=1e-5)
        assert torch.allclose(guided_eps(m, x, 200, c, 2.), cfg_eps(m(x, 200), m(x, 200, c), 2.), atol=1e-5)  # scalar t


def test_guided_eps_uses_one_batched_forward():
    m = CountingModel(small_unet())
    x, t, c = torch.randn(3, 1, 16, 16), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        guided_eps(m, x, t, c, 3.); assert m.calls == [6]
        m.calls.clear(); guided_eps(m, x, t, c, 1.); assert m.calls == [3]
        m.calls.clear(); guided_eps(m, x, t, c, 0.); assert m.calls == [3]


def test_guided_eps_errors():
    m = small_unet()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match='2 images'): guided_eps(m, x, 1, torch.tensor([1, 2, 3]), 2.)
    with pytest.raises(ValueError, match=r'lie in \[0, 9\]'): guided_eps(m, x, 1, torch.tensor([1, 10]), 2.)
    with pytest.raises(TypeError, match='class-conditioned'): guided_eps(UNet(channels=(16, 32), n_res=1, img_size=16, attn_res=()), x, 1, torch.tensor([0, 1]), 2.)


# ---- samplers ----
def test_guided_sample_shapes_and_determinism():
    m, s = small_unet(), linear_schedule(n_steps=20, beta_min=1e-3, beta_max=0.2)
    for sampler in ('ddim', 'ddpm'):
        a = guided_sample(m, [0, 1, 2], s, 3., sampler=sampler, n_steps=5, generator=torch.Generator().manual_seed(0))
        b = guided_sample(m, [0, 1, 2], s, 3., sampler=sampler, n_steps=5, generator=torch.Generator().manual_seed(0))
        c = guided_sample(m, [0, 1, 2], s, 3., sampler=sampler, n_steps=5, generator=torch.Generator().manual_seed(1))
        assert a.shape == (3, 1, 16, 16) and torch.isfinite(a).all()
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.training is False  # the model's mode is left as it was, eval...
    m.train(); guided_sample(m, [0], s, 2., n_steps=2)
    assert m.training is True  # ...or train


def test_guided_sample_scale_changes_samples_and_x_T():
    m, s = small_unet(), linear_schedule(n_steps=20, beta_min=1e-3, beta_max=0.2)
    x_T = torch.randn(2, 1, 16, 16)
    a, b = (guided_sample(m, [4, 5], s, w, n_steps=4, x_T=x_T) for w in (1., 4.))
    assert not torch.allclose(a, b)
    grid = class_grid(m, s, (1., 4.), n_per_class=1, n_steps=4, seed=3)
    assert grid.shape == (2, 10, 1, 16, 16)
    x_T = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(grid[1], guided_sample(m, torch.arange(10), s, 4., n_steps=4, x_T=x_T), atol=1e-6)


def test_guided_sample_errors():
    m, s = small_unet(), linear_schedule(n_steps=20, beta_min=1e-3, beta_max=0.2)
    with pytest.raises(ValueError, match='this model has 10 classes'): guided_sample(m, [10], s)
    with pytest.raises(ValueError, match='guidance scale w'): guided_sample(m, [1], s, w=-2.)
    with pytest.raises(ValueError, match='sampler must be one of'): guided_sample(m, [1], s, sampler='euler')
    with pytest.raises(ValueError, match="only supported by sampler='ddim'"): guided_sample(m, [1], s, sampler='ddpm', x_T=torch.randn(1, 1, 16, 16))
    with pytest.raises(TypeError, match='Schedule'): guided_sample(m, [1], s.alpha_bar)
    with pytest.raises(TypeError, match='class-conditioned'): GuidedModel(nn.Linear(2, 2), [1])


def test_guidance_table():
    row = dict(acc=0.5, fid=12.345, kid=0.0021, n=40, sample_s=3.)
    txt = guidance_table({'w=1': row, 'real': row})
    assert 'w=1' in txt and 'real' in txt and '12.35' in txt and '2.10' in txt


def test_callback_sample_uses_its_schedule():
    m, cb = small_unet(), CFGDDPMCB(n_steps=20, beta_min=1e-3, beta_max=0.2)
    a = cb.sample(m, [2, 3], w=2., n_steps=4, generator=torch.Generator().manual_seed(0))
    b = guided_sample(m, [2, 3], cb.sched, 2., n_steps=4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b)
