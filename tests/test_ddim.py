import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddpm_from_scratch.ddim as ddim_mod
from ddpm_from_scratch.data import DataLoaders
from ddpm_from_scratch.ddim import (ABAR_MIN, ContinuousDDPMCB, DatasetDenoiser, NoiseOracle, abar_cos, cnoisify,
                                    ddim, ddim_sample, ddim_sigma, ddim_step, ddim_timesteps, ddpm, denoisify,
                                    time_grid)
from ddpm_from_scratch.ddpm import linear_schedule
from ddpm_from_scratch.learner import Callback, Learner, SingleBatchCB
from ddpm_from_scratch.sampling import posterior_coefs, sample

torch.set_num_threads(1)


def images(n=4, size=8, seed=0):
    "Clean-looking images in [-1, 1] (tanh of noise), small so the tests stay fast."
    return torch.tanh(torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed)))

def noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class TinyNet(nn.Module):
    "A fixed random conv net whose output depends on x and t: an imperfect noise predictor."
    def __init__(self, seed=0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
    def forward(self, x, t):
        tt = t.float().reshape(-1, 1, 1, 1)
        return self.c2(torch.tanh(self.c1(x) * (1 + tt / (1 + tt.abs().max())))) + x


class Spy(nn.Module):
    "Records every t it is called with and the dtype; predicts zero noise."
    def __init__(self): super().__init__(); self.ts = []
    def forward(self, x, t):
        self.ts.append(t.detach().clone())
        return torch.zeros_like(x)


# ---------------------------------------------------------------- step lists

def test_uniform_timesteps_convention():
    assert ddim_timesteps(10, 1000).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(1, 1000).tolist() == [999]
    assert ddim_timesteps(2, 1000).tolist() == [999, 0]
    assert ddim_timesteps(4, 10).tolist() == [9, 6, 3, 0]
    assert ddim_timesteps(10).dtype == torch.int64


def test_quadratic_timesteps_exact_and_denser_near_zero():
    # round(999 (i/9)^2), i = 9..0
    assert ddim_timesteps(10, 1000, 'quadratic').tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    q, u = ddim_timesteps(25, 1000, 'quadratic'), ddim_timesteps(25, 1000, 'uniform')
    assert (q < 250).sum() >= 2 * (u < 250).sum()
    gaps = -q.diff()  # from the top down
    assert gaps[-1] < gaps[0] and gaps[-1] <= 10


@pytest.mark.parametrize('spacing', ['uniform', 'quadratic'])
@pytest.mark.parametrize('n,T', [(1, 1000), (2, 1000), (7, 1000), (50, 1000), (100, 1000), (999, 1000), (1000, 1000),
                                 (5, 5), (3, 7), (60, 100)])
def test_timesteps_counts_and_order(n, T, spacing):
    ts = ddim_timesteps(n, T, spacing)
    assert len(ts) == n and len(set(ts.tolist())) == n
    assert ts[0] == T - 1 and (n == 1 or ts[-1] == 0)
    assert (ts.diff() < 0).all()  # strictly decreasing
    if n == T: assert ts.tolist() == list(range(T - 1, -1, -1))


def test_quadratic_collisions_are_repaired():
    # round(999 (i/99)^2) gives 0, 0, 0, 1, 2, ... near zero: the repair keeps every step, one apart
    ts = ddim_timesteps(100, 1000, 'quadratic').flip(0)
    assert ts[:5].tolist() == [0, 1, 2, 3, 4]
    assert ts[-1] == 999


@pytest.mark.parametrize('kw,msg', [(dict(n_steps=0), 'positive int'), (dict(n_steps=1001), 'n_steps <= 1000'),
                                    (dict(n_steps=2.5), 'positive int'), (dict(n_steps=True), 'positive int'),
                                    (dict(spacing='cosine'), 'spacing must be one of'),
                                    (dict(n_train_steps=0), 'n_train_steps must be')])
def test_timesteps_validation(kw, msg):
    with pytest.raises(ValueError, match=msg): ddim_timesteps(**{'n_steps': 10, **kw})


# ---------------------------------------------------------------- one DDIM step

def test_step_with_true_noise_gives_exact_x0():
    s = linear_schedule()
    x0 = images()
    for t, tp in [(999, 888), (500, 499), (10, 0), (0, -1)]:
        (x_t, _), eps = ddpm_noisify(x0, s.alpha_bar, t)
        x_prev, x0_hat = ddim_step(x_t, t, tp, eps, s.alpha_bar, eta=0.)
        assert (x0_hat - x0).abs().max() < 1e-4, t
        # eta=0: x_prev is x0 noised to t_prev with the same noise
        ab_p = 1. if tp < 0 else s.alpha_bar[tp].double()
        expected = math.sqrt(ab_p) * x0 + math.sqrt(1 - ab_p) * eps
        assert (x_prev - expected).abs().max() < 1e-4, t

def ddpm_noisify(x0, alpha_bar, t):
    from ddpm_from_scratch.ddpm import noisify
    return noisify(x0, alpha_bar, t)


def test_eta1_all_steps_is_the_ddpm_posterior():
    s = linear_schedule(dtype=torch.float64)
    ab, al, be = s.alpha_bar, s.alpha, s.beta
    t = torch.arange(1, 1000)
    beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * be[t]
    torch.testing.assert_close(ddim_sigma(ab[t], ab[t - 1], 1.) ** 2, beta_tilde, rtol=1e-9, atol=0)
    torch.testing.assert_close(ddim_sigma(ab[t], ab[t - 1], 0.5) ** 2, beta_tilde / 4, rtol=1e-9, atol=0)
    torch.testing.assert_close(ddim_sigma(ab[t], ab[t - 1], 1.) ** 2, posterior_coefs(s).var[t], rtol=1e-9, atol=0)
    # the step itself: mean with noise off, variance from the change the noise makes
    x_t, eps, z = noise((3, 1, 4, 4), 1).double(), noise((3, 1, 4, 4), 2).double(), noise((3, 1, 4, 4), 3).double()
    for tt in (1, 2, 50, 500, 999):
        m, x0_hat = ddim_step(x_t, tt, tt - 1, eps, ab, eta=1., noise=torch.zeros_like(z))
        mu = (ab[tt - 1].sqrt() * be[tt] / (1 - ab[tt])) * x0_hat + (al[tt].sqrt() * (1 - ab[tt - 1]) / (1 - ab[tt])) * x_t
        torch.testing.assert_close(m, mu, rtol=1e-9, atol=1e-9)
        x_prev, _ = ddim_step(x_t, tt, tt - 1, eps, ab, eta=1., noise=z)
        torch.testing.assert_close(((x_prev - m) / z) ** 2, beta_tilde[tt - 1].expand_as(z), rtol=1e-6, atol=0)


def test_eta0_step_ignores_noise_and_eta1_uses_it():
    s = linear_schedule()
    x_t, eps = noise((2, 1, 4, 4), 0), noise((2, 1, 4, 4), 1)
    a, _ = ddim_step(x_t, 600, 500, eps, s.alpha_bar, 0., noise=noise((2, 1, 4, 4), 2))
    b, _ = ddim_step(x_t, 600, 500, eps, s.alpha_bar, 0., noise=noise((2, 1, 4, 4), 3))
    assert torch.equal(a, b)
    c, _ = ddim_step(x_t, 600, 500, eps, s.alpha_bar, 1., generator=torch.Generator().manual_seed(0))
    d, _ = ddim_step(x_t, 600, 500, eps, s.alpha_bar, 1., generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)


def test_step_per_sample_steps_match_scalar_steps():
    s = linear_schedule()
    x_t, eps = noise((3, 1, 4, 4), 0), noise((3, 1, 4, 4), 1)
    t, tp = torch.tensor([900, 500, 10]), torch.tensor([800, 100, -1])
    batch, _ = ddim_step(x_t, t, tp, eps, s.alpha_bar)
    for i in range(3):
        one, _ = ddim_step(x_t[i:i+1], int(t[i]), int(tp[i]), eps[i:i+1], s.alpha_bar)
        torch.testing.assert_close(batch[i:i+1], one)


def test_clip_recomputes_consistent_noise():
    s = linear_schedule()
    x_t, eps = 3 * noise((2, 1, 4, 4), 0), noise((2, 1, 4, 4), 1)
    x_prev, x0 = ddim_step(x_t, 300, 200, eps, s.alpha_bar, clip=True)
    assert x0.min() >= -1 and x0.max() <= 1
    ab_t, ab_s = s.alpha_bar[300].double(), s.alpha_bar[200].double()
    eps_c = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    torch.testing.assert_close(x_prev, (ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps_c).float(), rtol=1e-5, atol=1e-5)


def test_step_validation():
    s = linear_schedule()
    x, e = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match='eta'): ddim_step(x, 10, 5, e, s.alpha_bar, eta=1.5)
    with pytest.raises(ValueError, match='eta'): ddim_step(x, 10, 5, e, s.alpha_bar, eta=float('nan'))
    with pytest.raises(ValueError, match='smaller than t'): ddim_step(x, 10, 10, e, s.alpha_bar)
    with pytest.raises(ValueError, match='not -1'): ddim_step(x, -1, -1, e, s.alpha_bar)
    with pytest.raises(ValueError, match=r'\[-1, 1000\)'): ddim_step(x, 1000, 5, e, s.alpha_bar)
    with pytest.raises(TypeError, match='integer'): ddim_step(x, 0.5, 0.2, e, s.alpha_bar)


# ---------------------------------------------------------------- the discrete sampler

@pytest.mark.parametrize('n,spacing,eta', [(1, 'uniform', 0.), (10, 'uniform', 0.), (10, 'quadratic', 0.),
                                           (37, 'quadratic', 0.5), (100, 'uniform', 1.)])
def test_ddim_sample_with_oracle_returns_x0(n, spacing, eta):
    s = linear_schedule()
    x0 = images()
    out = ddim_sample(NoiseOracle(x0, s.alpha_bar), None, s, n, eta, spacing, x_T=noise(x0.shape, 5),
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.parametrize('n,spacing', [(10, 'uniform'), (17, 'quadratic'), (1, 'uniform')])
def test_ddim_sample_visits_the_documented_steps(n, spacing):
    spy = Spy()
    ddim_sample(spy, (3, 1, 4, 4), linear_schedule(), n, spacing=spacing, progress=False)
    assert len(spy.ts) == n
    assert all(t.dtype == torch.int64 and t.shape == (3,) for t in spy.ts)
    assert [int(t[0]) for t in spy.ts] == ddim_timesteps(n, 1000, spacing).tolist()


def test_ddim_eta0_is_deterministic_given_x_T():
    s, m = linear_schedule(), TinyNet()
    x_T = noise((2, 1, 8, 8), 0)
    a = ddim_sample(m, (2, 1, 8, 8), s, 20, x_T=x_T, generator=torch.Generator().manual_seed(1), progress=False)
    b = ddim_sample(m, (2, 1, 8, 8), s, 20, x_T=x_T.clone(), generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)
    c = ddim_sample(m, (2, 1, 8, 8), s, 20, x_T=noise((2, 1, 8, 8), 9), progress=False)
    assert not torch.allclose(a, c)
    # eta > 0: the generator matters, and the same seed reproduces
    e1 = [ddim_sample(m, (2, 1, 8, 8), s, 20, eta=1., x_T=x_T, generator=torch.Generator().manual_seed(k), progress=False)
          for k in (1, 1, 2)]
    assert torch.equal(e1[0], e1[1]) and not torch.allclose(e1[0], e1[2])


def test_ddim_sample_draws_x_T_from_generator():
    s, m = linear_schedule(), TinyNet()
    a = ddim_sample(m, (2, 1, 8, 8), s, 5, generator=torch.Generator().manual_seed(3), progress=False)
    b = ddim_sample(m, (2, 1, 8, 8), s, 5, x_T=noise((2, 1, 8, 8), 3), progress=False)
    assert torch.equal(a, b)


def test_ddim_eta1_all_steps_matches_reference_ddpm_loop():
    "DDIM with eta=1 over every step is DDPM ancestral sampling with the posterior variance (beta tilde)."
    s, m = linear_schedule(beta_max=0.2, n_steps=100), TinyNet()
    x_T = noise((2, 1, 8, 8), 0)
    out = ddim_sample(m, None, s, 100, eta=1., x_T=x_T, generator=torch.Generator().manual_seed(7), progress=False)
    # an independent, plain loop over the posterior q(x_{t-1} | x_t, x0_hat)
    g = torch.Generator().manual_seed(7)
    ab, al, be = (v.double() for v in (s.alpha_bar, s.alpha, s.beta))
    x = x_T.double()
    with torch.no_grad():
        for t in range(99, -1, -1):
            eps = m(x.float(), torch.full((2,), t)).double()
            x0 = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)
            abp = ab[t - 1] if t > 0 else torch.tensor(1., dtype=torch.float64)
            mean = abp.sqrt() * be[t] / (1 - ab[t]) * x0 + al[t].sqrt() * (1 - abp) / (1 - ab[t]) * x
            if t == 0: x = mean; break  # no noise on the last step
            z = torch.randn(x.shape, generator=g).double()
            x = mean + ((1 - abp) / (1 - ab[t]) * be[t]).sqrt() * z
    torch.testing.assert_close(out, x.float(), rtol=1e-4, atol=1e-4)
    # and the package's own DDPM sampler with the posterior variance, from the same seed
    ref = sample(m, (2, 1, 8, 8), s, generator=torch.Generator().manual_seed(7), variance='posterior', progress=False)
    out2 = ddim_sample(m, (2, 1, 8, 8), s, 100, eta=1., generator=torch.Generator().manual_seed(7), progress=False)
    torch.testing.assert_close(out2, ref, rtol=1e-4, atol=1e-4)


def test_ddim_sample_restores_training_mode_and_unwraps_outputs():
    class Out:
        def __init__(self, sample): self.sample = sample
    class Wrapped(TinyNet):
        def forward(self, x, t): return Out(super().forward(x, t))
    m = Wrapped().train()
    out = ddim_sample(m, (1, 1, 8, 8), linear_schedule(), 3, progress=False)
    assert m.training and out.shape == (1, 1, 8, 8) and out.abs().max() <= 1


def test_ddim_sample_validation():
    s, m = linear_schedule(n_steps=50), TinyNet()
    with pytest.raises(TypeError, match='Schedule'): ddim_sample(m, (1, 1, 8, 8), s.alpha_bar, 10)
    with pytest.raises(ValueError, match='n_steps <= 50'): ddim_sample(m, (1, 1, 8, 8), s, 51)
    with pytest.raises(ValueError, match='eta'): ddim_sample(m, (1, 1, 8, 8), s, 10, eta=-0.1)
    with pytest.raises(ValueError, match='spacing'): ddim_sample(m, (1, 1, 8, 8), s, 10, spacing='log')
    with pytest.raises(ValueError, match='x_T has shape'): ddim_sample(m, (2, 1, 8, 8), s, 10, x_T=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match='shape must be'): ddim_sample(m, (2, 0, 8, 8), s, 10)


# ---------------------------------------------------------------- continuous time

def test_abar_cos_shape_of_the_curve():
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    a = abar_cos(t)
    assert a[0] == 1 and (a > 0).all() and (a <= 1).all()
    assert (a.diff() < 0).all()  # strictly decreasing, no flat clamped tail
    assert abs(a[-1].item() - ABAR_MIN) < 1e-12 and a[-1] <= 1e-4
    assert (a - torch.cos(t * math.pi / 2) ** 2).abs().max() <= ABAR_MIN + 1e-12
    assert abs(abar_cos(0.5).item() - (0.5 + ABAR_MIN / 2)) < 1e-6
    assert abar_cos(torch.tensor([0., 1.])).dtype == torch.float32


def test_abar_cos_validation():
    with pytest.raises(ValueError, match=r'\[0, 1\]'): abar_cos(torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match=r'\[0, 1\]'): abar_cos(-0.1)
    with pytest.raises(TypeError, match='continuous time'): abar_cos(torch.tensor([500]))
    with pytest.raises(ValueError, match='abar_min'): abar_cos(0.5, abar_min=0)


def test_cnoisify_and_denoisify():
    x0 = images(64, 8)
    (x_t, t), eps = cnoisify(x0, generator=torch.Generator().manual_seed(0))
    assert x_t.shape == x0.shape == eps.shape and t.shape == (64,) and t.dtype == torch.float32
    assert (t >= 0).all() and (t < 1).all() and t.std() > 0.2
    a = abar_cos(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    keep = t < 0.95
    torch.testing.assert_close(denoisify(x_t, eps, t)[keep], x0[keep], rtol=0, atol=1e-4)
    # the same generator reproduces t and the noise
    (x2, t2), e2 = cnoisify(x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and torch.equal(eps, e2)
    # at t=1 the image is (almost) pure noise; at t=0 it is the image
    (x1, _), e1 = cnoisify(x0, 1.)
    assert (x1 - e1).abs().max() < 0.02
    (xz, tz), _ = cnoisify(x0, 0.)
    assert torch.equal(xz, x0) and (tz == 0).all()


def test_cnoisify_validation():
    x0 = images(2, 4)
    with pytest.raises(TypeError, match='continuous time'): cnoisify(x0, torch.tensor([3, 400]))
    with pytest.raises(ValueError, match=r'shape \(2,\)'): cnoisify(x0, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r'\[0, 1\]'): cnoisify(x0, 1.5)
    with pytest.raises(TypeError, match='x0'): cnoisify(x0.long())


def test_continuous_callback_trains_with_float_t():
    seen = []
    class Rec(nn.Module):
        def __init__(self): super().__init__(); self.c = nn.Conv2d(1, 1, 3, padding=1)
        def forward(self, x, t): seen.append(t.detach().clone()); return self.c(x)
    class Grab(Callback):
        order = 100
        def after_loss(self, learn): self.eps, self.preds, self.loss = learn.batch[1], learn.preds, learn.loss
    x = images(16, 8)
    dls = DataLoaders.from_tensors((x,), (x,), 8)
    cb, grab = ContinuousDDPMCB(t_scale=1000.), Grab()
    assert cb.n_inp == 1
    Learner(Rec(), dls, F.mse_loss, lr=1e-3, cbs=[cb, grab, SingleBatchCB()]).fit(1)
    t = seen[0]
    assert t.is_floating_point() and t.shape == (8,) and (t >= 0).all() and (t < 1000).all() and t.max() > 1
    torch.testing.assert_close(grab.loss, F.mse_loss(grab.preds, grab.eps))  # the target is the noise


@pytest.mark.parametrize('sampler,kw', [(ddpm, {}), (ddim, {}), (ddim, dict(eta=1.)), (ddim, dict(eta=0.3))])
@pytest.mark.parametrize('n', [1, 2, 10, 100])
def test_continuous_samplers_with_oracle_return_x0(sampler, kw, n):
    x0 = images()
    out = sampler(NoiseOracle(x0, abar_cos), None, n_steps=n, x_T=noise(x0.shape, 1), progress=False,
                  generator=torch.Generator().manual_seed(0), **kw)
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.parametrize('sampler', [ddpm, ddim])
@pytest.mark.parametrize('n,t_scale', [(1, 1.), (10, 1.), (25, 1000.)])
def test_continuous_time_grid_seen_by_the_model(sampler, n, t_scale):
    spy = Spy()
    sampler(spy, (3, 1, 4, 4), n_steps=n, t_scale=t_scale, progress=False)
    assert len(spy.ts) == n
    seen = torch.stack([t[0] for t in spy.ts]).double()
    assert all(t.is_floating_point() and t.shape == (3,) for t in spy.ts)
    assert seen[0] == t_scale  # starts at t = 1
    assert abs(seen[-1] / t_scale - 1 / n) < 1e-6  # ends next to 0: the last jump lands on t = 0
    torch.testing.assert_close(seen / t_scale, time_grid(n)[:-1], rtol=0, atol=1e-6)
    assert time_grid(n)[0] == 1 and time_grid(n)[-1] == 0


def test_continuous_ddim_eta1_equals_ddpm():
    m, x_T = TinyNet(), noise((2, 1, 8, 8), 0)
    for clip in (True, False):
        a = ddpm(m, None, 30, x_T=x_T, generator=torch.Generator().manual_seed(4), clip=clip, progress=False)
        b = ddim(m, None, 30, eta=1., x_T=x_T, generator=torch.Generator().manual_seed(4), clip=clip, progress=False)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = ddim(m, None, 30, eta=0., x_T=x_T, progress=False)
    assert not torch.allclose(a, c, atol=1e-2)


def test_continuous_ddim_eta0_deterministic_and_callback_sample():
    m, x_T = TinyNet(), noise((2, 1, 8, 8), 0)
    a = ddim(m, None, 15, x_T=x_T, generator=torch.Generator().manual_seed(1), progress=False)
    b = ddim(m, None, 15, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)
    c = ContinuousDDPMCB().sample(m, None, n_steps=15, x_T=x_T, progress=False)
    assert torch.equal(a, c)


def test_continuous_sampler_validation():
    m = TinyNet()
    with pytest.raises(ValueError, match='n_steps'): ddim(m, (1, 1, 4, 4), n_steps=0)
    with pytest.raises(ValueError, match='n_steps'): ddpm(m, (1, 1, 4, 4), n_steps=2.5)
    with pytest.raises(ValueError, match='eta'): ddim(m, (1, 1, 4, 4), eta=2.)
    with pytest.raises(ValueError, match='x_T has shape'): ddpm(m, (2, 1, 4, 4), x_T=torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------- the two "deep-fried" bugs

def oracle_error(sampler, n=20):
    x0 = images()
    out = sampler(NoiseOracle(x0, abar_cos), None, n_steps=n, x_T=noise(x0.shape, 1), progress=False)
    return (out - x0).abs().max().item()


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_bug1_random_noise_in_denoisify_is_caught(monkeypatch, sampler):
    "Bug 1: denoisify fed torch.randn instead of the predicted noise. The oracle test above fails on it."
    good = denoisify
    assert oracle_error(getattr(ddim_mod, sampler)) < 1e-4
    monkeypatch.setattr(ddim_mod, 'denoisify', lambda x_t, eps, t, abar=abar_cos: good(x_t, torch.randn_like(eps), t, abar))
    assert not oracle_error(getattr(ddim_mod, sampler)) < 1e-4


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_bug2_last_step_at_t1_is_caught(monkeypatch, sampler):
    "Bug 2: the last step used t=1 instead of t=0. Both the oracle test and the time-grid test fail on it."
    good = time_grid
    monkeypatch.setattr(ddim_mod, 'time_grid', lambda n: torch.cat([good(n)[:-1], torch.ones(1, dtype=torch.float64)]))
    assert not oracle_error(getattr(ddim_mod, sampler)) < 1e-4  # far off (ddim), or NaN (ddpm: a negative variance)
    # the variant where the model itself is called at t=1 for the last step
    monkeypatch.setattr(ddim_mod, 'time_grid', lambda n: torch.cat([good(n)[:-2], torch.tensor([1., 0.], dtype=torch.float64)]))
    spy = Spy()
    getattr(ddim_mod, sampler)(spy, (1, 1, 4, 4), n_steps=10, progress=False)
    assert spy.ts[-1][0] == 1  # what test_continuous_time_grid_seen_by_the_model asserts against (it wants 1/n)


# ---------------------------------------------------------------- the perfect memoriser

def test_dataset_denoiser_samples_training_images():
    data = images(6, 8, seed=3)
    for out in (ddim(DatasetDenoiser(data, abar_cos), (4, 1, 8, 8), 10, generator=torch.Generator().manual_seed(0), progress=False),
                ddim_sample(DatasetDenoiser(data, linear_schedule().alpha_bar), (4, 1, 8, 8), linear_schedule(), 10,
                            generator=torch.Generator().manual_seed(0), progress=False)):
        d = torch.cdist(out.flatten(1), data.flatten(1)).min(1).values
        assert d.max() < 1e-3
    # with a single image it is the oracle
    one = data[:1]
    (x_t, t), eps = cnoisify(one, 0.7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(DatasetDenoiser(one, abar_cos)(x_t, t), NoiseOracle(one, abar_cos)(x_t, t))
