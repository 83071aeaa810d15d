"Tests of classifier-free guidance: label dropout, the conditional DDPMCB, the guidance formula, the batched guided prediction, the samplers."
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ddpm_from_scratch.data import DataLoaders
from ddpm_from_scratch.ddpm import DDPMCB, fit_ddpm
from ddpm_from_scratch.process import Schedule, abar_cos, drop_labels, linear_schedule
from ddpm_from_scratch.ddim import SAMPLERS, sample, sampler_options
from ddpm_from_scratch.guidance import GuidedModel, cfg_eps, class_grid, guided_eps, guided_sample

COS = Schedule.continuous(abar_cos)  # continuous time: the cosine alpha-bar of t in [0, 1]


@pytest.fixture
def cond_unet(tiny_unet):
    "A factory of tiny class-conditional U-Nets, every layer randomised so that the class matters, in eval mode."
    return lambda seed=0, n_classes=10: tiny_unet(seed, randomise=True, n_classes=n_classes).eval()


def sched(): return Schedule.from_beta(torch.linspace(1e-3, 0.2, 20))


def few_steps(name, n=5):
    "Options that keep `name` short: a few steps if the sampler takes a step count."
    return {'steps': n} if 'steps' in sampler_options(name) else {}


class CountingModel(nn.Module):
    "Wraps a model and records the batch size of every forward call (and the classes it saw)."
    def __init__(self, m):
        super().__init__(); self.m, self.calls, self.cs, self.n_classes, self.config = m, [], [], m.n_classes, m.config
    def forward(self, x, t, c=None):
        self.calls.append(len(x)); self.cs.append(c); return self.m(x, t, c)


# ---- label dropout (drop_labels lives in ddpm.py; it is this lesson's) ----
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


# ---- the training callback: DDPMCB(schedule, cond=n_classes, p_uncond=...) ----
def test_conditional_callback_batches_and_fraction():
    cb = DDPMCB(linear_schedule(n_steps=100), cond=10, p_uncond=0.2)
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


def test_conditional_callback_trains_with_the_learner(tiny_unet):
    m = CountingModel(tiny_unet(n_classes=10))
    x, y = torch.rand(64, 1, 16, 16) * 2 - 1, torch.full((64,), 3)  # one class: the batches are shuffled
    cb = DDPMCB(linear_schedule(n_steps=50), cond=10, p_uncond=0.5)
    fit_ddpm(m, DataLoaders.from_tensors((x, y), (x[:16], y[:16]), 16), 1, 1e-3, cb=cb, metrics=False, valid=False)
    assert m.calls == [16] * 4 and cb.n_labels == 64 and 0 < cb.n_dropped < 64
    seen = torch.cat(m.cs)  # the model was called with the labels, some dropped to "no class"
    assert int((seen == 10).sum()) == cb.n_dropped and ((seen == 10) | (seen == 3)).all()


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


def test_guided_eps_equals_separate_calls(cond_unet):
    m = cond_unet()
    x, t, c = torch.randn(4, 1, 16, 16), torch.tensor([5, 200, 600, 999]), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        e_c, e_u = m(x, t, c), m(x, t)
        assert (e_c - e_u).abs().max() > 1e-3  # the class matters, so the checks below can fail
        for skip in (True, False):
            assert torch.allclose(guided_eps(m, x, t, c, 1., skip=skip), e_c, atol=1e-5)  # w=1: the conditional model
            assert torch.allclose(guided_eps(m, x, t, c, 0., skip=skip), e_u, atol=1e-5)  # w=0: the unconditional one
        assert torch.allclose(guided_eps(m, x, t, c, 2.5), e_u + 2.5 * (e_c - e_u), atol=1e-5)
        assert torch.allclose(guided_eps(m, x, 200, c, 2.), cfg_eps(m(x, 200), m(x, 200, c), 2.), atol=1e-5)  # scalar t


def test_guided_eps_uses_one_batched_forward(cond_unet):
    m = CountingModel(cond_unet())
    x, t, c = torch.randn(3, 1, 16, 16), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        guided_eps(m, x, t, c, 3.); assert m.calls == [6]
        m.calls.clear(); guided_eps(m, x, t, c, 1.); assert m.calls == [3]
        m.calls.clear(); guided_eps(m, x, t, c, 0.); assert m.calls == [3]


def test_guided_eps_errors(tiny_unet, cond_unet):
    m = cond_unet()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match='2 images'): guided_eps(m, x, 1, torch.tensor([1, 2, 3]), 2.)
    with pytest.raises(ValueError, match=r'lie in \[0, 9\]'): guided_eps(m, x, 1, torch.tensor([1, 10]), 2.)
    with pytest.raises(TypeError, match='class-conditioned'): guided_eps(tiny_unet(), x, 1, torch.tensor([0, 1]), 2.)


def test_guided_model_takes_the_wrapped_models_mode(cond_unet):
    m = cond_unet()
    assert GuidedModel(m).training is False
    assert GuidedModel(m.train()).training is True
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 9])
    with torch.no_grad():
        assert torch.allclose(GuidedModel(m.eval(), 2.)(x, t, torch.tensor([4, 5])), guided_eps(m, x, t, torch.tensor([4, 5]), 2.))
    with pytest.raises(TypeError, match='class-conditioned'): GuidedModel(nn.Linear(2, 2))


# ---- samplers: every sampler of the registry, through `sample` ----
@pytest.mark.parametrize('name', list(SAMPLERS))
def test_guided_sample_shapes_determinism_and_mode(cond_unet, name):
    m, s, opts = cond_unet(), sched(), few_steps(name)
    run = lambda seed: guided_sample(m, s, [0, 1, 2], 3., name, generator=torch.Generator().manual_seed(seed),
                                     progress=False, **opts)
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (3, 1, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.training is False  # the model's mode is left as it was, eval...
    modes = []
    m.train(); guided_sample(m, s, [0], 2., name, progress=False, callback=lambda d: modes.append(m.training), **opts)
    assert m.training is True and modes and not any(modes)  # ...or train; eval inside


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_guided_sample_is_sample_of_the_guided_model(cond_unet, name):
    "No per-sampler branches: guided_sample is the registry's `sample` of a `GuidedModel`, the classes as its condition."
    m, s, opts = cond_unet(), sched(), few_steps(name)
    a = guided_sample(m, s, [2, 3], 2., name, generator=torch.Generator().manual_seed(0), progress=False, **opts)
    b = sample(GuidedModel(m, 2.), (2, 1, 16, 16), s, name, generator=torch.Generator().manual_seed(0),
               progress=False, cond=[2, 3], **opts)
    assert torch.equal(a, b)
    x_T = torch.randn(2, 1, 16, 16)
    a = guided_sample(m, s, [2, 3], 2., name, x_T=x_T, generator=torch.Generator().manual_seed(0), progress=False, **opts)
    b = sample(GuidedModel(m, 2.), x_T, s, name, generator=torch.Generator().manual_seed(0), progress=False, cond=[2, 3], **opts)
    assert torch.equal(a, b)


def test_guided_sample_scale_changes_samples_and_x_T(cond_unet):
    m, s = cond_unet(), sched()
    x_T = torch.randn(2, 1, 16, 16)
    a, b = (guided_sample(m, s, [4, 5], w, steps=4, x_T=x_T, progress=False) for w in (1., 4.))
    assert not torch.allclose(a, b)
    grid = class_grid(m, s, (1., 4.), n_per_class=1, seed=3, steps=4, progress=False)
    assert grid.shape == (2, 10, 1, 16, 16)
    x_T = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(grid[1], guided_sample(m, s, torch.arange(10), 4., steps=4, x_T=x_T, progress=False), atol=1e-6)
    assert not torch.allclose(grid[0], grid[1])


def test_guided_sample_continuous_time(cond_unet):
    m = cond_unet()
    out = guided_sample(m, COS, [1, 2], 3., 'ddim', steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


def test_guided_sample_errors(tiny_unet, cond_unet):
    m, s = cond_unet(), sched()
    with pytest.raises(ValueError, match='this model has 10 classes'): guided_sample(m, s, [10], progress=False)
    with pytest.raises(ValueError, match='guidance scale w'): guided_sample(m, s, [1], w=-2., progress=False)
    with pytest.raises(ValueError, match='plms'): guided_sample(m, s, [1], sampler='plms', progress=False)
    with pytest.raises(TypeError, match='steps'): guided_sample(m, s, [1], sampler='ddim', stepz=3, progress=False)
    with pytest.raises(ValueError, match='2 images'): guided_sample(m, s, [1], x_T=torch.randn(2, 1, 16, 16), steps=3, progress=False)
    with pytest.raises(TypeError, match='class-conditioned'): class_grid(tiny_unet(), s)


def test_guided_generate_batches_like_guided_sample(tiny_unet, cond_unet):
    from ddpm_from_scratch.guidance import guided_generate
    torch.manual_seed(0)
    m, sched = cond_unet(), linear_schedule(n_steps=20)
    imgs = guided_generate(m, sched, [3, 1, 4, 1, 5], 2., steps=3, seed=0, bs=2, progress=False)
    assert imgs.shape == (5, 1, 16, 16) and imgs.abs().max() <= 1 and imgs.device.type == "cpu"  # the model's own image size
    one = guided_sample(m, sched, [3, 1], 2., steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.allclose(imgs[:2], one.clamp(-1, 1), atol=1e-5)  # batch 0 is guided_sample of its two classes
    with pytest.raises(ValueError, match=r'lie in \[0, 9\]'): guided_generate(m, sched, [10], 1., steps=2, progress=False)
    with pytest.raises(TypeError, match='class-conditioned'): guided_generate(tiny_unet(), sched, [1], 1., steps=2, progress=False)
