import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddpm_from_scratch.ddim as ddim_mod
from ddpm_from_scratch.data import DataLoaders
from ddpm_from_scratch.ddim import (SAMPLERS, DatasetDenoiser, NoiseOracle, sample_ddim, ddim_sigma, ddim_step,
                                    ddim_timesteps, generate, get_sampler, sample, sampler_options, time_grid)
from ddpm_from_scratch.ddpm import DDPMCB
from ddpm_from_scratch.process import abar_cos, alpha_bar_at, linear_schedule, noisify, x0_from_eps
from ddpm_from_scratch.learner import Callback, Learner, SingleBatchCB
from ddpm_from_scratch.sampling import KeepSteps, sample_ddpm, posterior_coefs
from ddpm_from_scratch.process import Schedule

COS = Schedule.continuous(abar_cos)  # continuous time: the cosine alpha-bar of t in [0, 1]


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


@pytest.mark.parametrize('kw,msg', [(dict(steps=0), 'positive int'), (dict(steps=1001), 'steps <= 1000'),
                                    (dict(steps=2.5), 'positive int'), (dict(steps=True), 'positive int'),
                                    (dict(spacing='cosine'), 'spacing must be one of'),
                                    (dict(n_steps=0), 'n_steps must be')])
def test_timesteps_validation(kw, msg):
    with pytest.raises(ValueError, match=msg): ddim_timesteps(**{'steps': 10, **kw})


# ---------------------------------------------------------------- one DDIM step

def test_step_with_true_noise_gives_exact_x0():
    s = linear_schedule()
    x0 = images()
    for t, tp in [(999, 888), (500, 499), (10, 0), (0, -1)]:
        (x_t, _), eps = noisify(x0, s, t)
        x_prev, x0_hat = ddim_step(x_t, t, tp, eps, s, eta=0.)
        assert (x0_hat - x0).abs().max() < 1e-4, t
        # eta=0: x_prev is x0 noised to t_prev with the same noise
        ab_p = 1. if tp < 0 else s.alpha_bar[tp].double()
        expected = math.sqrt(ab_p) * x0 + math.sqrt(1 - ab_p) * eps
        assert (x_prev - expected).abs().max() < 1e-4, t


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
        m, x0_hat = ddim_step(x_t, tt, tt - 1, eps, s, eta=1., noise=torch.zeros_like(z))
        mu = (ab[tt - 1].sqrt() * be[tt] / (1 - ab[tt])) * x0_hat + (al[tt].sqrt() * (1 - ab[tt - 1]) / (1 - ab[tt])) * x_t
        torch.testing.assert_close(m, mu, rtol=1e-9, atol=1e-9)
        x_prev, _ = ddim_step(x_t, tt, tt - 1, eps, s, eta=1., noise=z)
        torch.testing.assert_close(((x_prev - m) / z) ** 2, beta_tilde[tt - 1].expand_as(z), rtol=1e-6, atol=0)


def test_eta0_step_ignores_noise_and_eta1_uses_it():
    s = linear_schedule()
    x_t, eps = noise((2, 1, 4, 4), 0), noise((2, 1, 4, 4), 1)
    a, _ = ddim_step(x_t, 600, 500, eps, s, 0., noise=noise((2, 1, 4, 4), 2))
    b, _ = ddim_step(x_t, 600, 500, eps, s, 0., noise=noise((2, 1, 4, 4), 3))
    assert torch.equal(a, b)
    c, _ = ddim_step(x_t, 600, 500, eps, s, 1., generator=torch.Generator().manual_seed(0))
    d, _ = ddim_step(x_t, 600, 500, eps, s, 1., generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)


def test_step_per_sample_steps_match_scalar_steps():
    s = linear_schedule()
    x_t, eps = noise((3, 1, 4, 4), 0), noise((3, 1, 4, 4), 1)
    t, tp = torch.tensor([900, 500, 10]), torch.tensor([800, 100, -1])
    batch, _ = ddim_step(x_t, t, tp, eps, s)
    for i in range(3):
        one, _ = ddim_step(x_t[i:i+1], int(t[i]), int(tp[i]), eps[i:i+1], s)
        torch.testing.assert_close(batch[i:i+1], one)


def test_clip_recomputes_consistent_noise():
    s = linear_schedule()
    x_t, eps = 3 * noise((2, 1, 4, 4), 0), noise((2, 1, 4, 4), 1)
    x_prev, x0 = ddim_step(x_t, 300, 200, eps, s, clip=True)
    assert x0.min() >= -1 and x0.max() <= 1
    ab_t, ab_s = s.alpha_bar[300].double(), s.alpha_bar[200].double()
    eps_c = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    torch.testing.assert_close(x_prev, (ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps_c).float(), rtol=1e-5, atol=1e-5)


def test_step_validation():
    s = linear_schedule()
    x, e = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match='eta'): ddim_step(x, 10, 5, e, s, eta=1.5)
    with pytest.raises(ValueError, match='eta'): ddim_step(x, 10, 5, e, s, eta=float('nan'))
    with pytest.raises(ValueError, match='smaller than t'): ddim_step(x, 10, 10, e, s)
    with pytest.raises(ValueError, match='not -1'): ddim_step(x, -1, -1, e, s)
    with pytest.raises(ValueError, match=r'\[0, 1000\)'): ddim_step(x, 1000, 5, e, s)
    with pytest.raises(ValueError, match=r'\[-1, T\)'): ddim_step(x, 10, -2, e, s)
    with pytest.raises(TypeError, match='int'): ddim_step(x, 0.5, 0.2, e, s)
    with pytest.raises(ValueError, match=r'\[0, 1\]'): ddim_step(x, 10, 5, e, COS)
    with pytest.raises(ValueError, match='eps_pred has shape'): ddim_step(x, 10, 5, e[..., :1], s)


# ---------------------------------------------------------------- the discrete sampler

@pytest.mark.parametrize('n,spacing,eta', [(1, 'uniform', 0.), (10, 'uniform', 0.), (10, 'quadratic', 0.),
                                           (37, 'quadratic', 0.5), (100, 'uniform', 1.)])
def test_ddim_sample_with_oracle_returns_x0(n, spacing, eta):
    s = linear_schedule()
    x0 = images()
    out = sample_ddim(NoiseOracle(x0, s), noise(x0.shape, 5), s, steps=n, eta=eta, spacing=spacing,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.parametrize('n,spacing', [(10, 'uniform'), (17, 'quadratic'), (1, 'uniform')])
def test_ddim_sample_visits_the_documented_steps(n, spacing):
    spy, seen = Spy(), []
    sample_ddim(spy, (3, 1, 4, 4), linear_schedule(), steps=n, spacing=spacing, progress=False, callback=seen.append)
    assert len(spy.ts) == n
    assert all(t.dtype == torch.int64 and t.shape == (3,) for t in spy.ts)
    assert [int(t[0]) for t in spy.ts] == ddim_timesteps(n, 1000, spacing).tolist() == [d['t'] for d in seen]


def test_ddim_eta0_is_deterministic_given_x_T():
    s, m = linear_schedule(), TinyNet()
    x_T = noise((2, 1, 8, 8), 0)
    a = sample_ddim(m, x_T, s, steps=20, generator=torch.Generator().manual_seed(1), progress=False)
    b = sample_ddim(m, x_T.clone(), s, steps=20, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)
    c = sample_ddim(m, noise((2, 1, 8, 8), 9), s, steps=20, progress=False)
    assert not torch.allclose(a, c)
    # eta > 0: the generator matters, and the same seed reproduces
    e1 = [sample_ddim(m, x_T, s, steps=20, eta=1., generator=torch.Generator().manual_seed(k), progress=False)
          for k in (1, 1, 2)]
    assert torch.equal(e1[0], e1[1]) and not torch.allclose(e1[0], e1[2])


def test_ddim_sample_draws_x_T_from_generator():
    s, m = linear_schedule(), TinyNet()
    a = sample_ddim(m, (2, 1, 8, 8), s, steps=5, generator=torch.Generator().manual_seed(3), progress=False)
    b = sample_ddim(m, noise((2, 1, 8, 8), 3), s, steps=5, progress=False)
    assert torch.equal(a, b)


def test_ddim_eta1_all_steps_matches_reference_ddpm_loop():
    "DDIM with eta=1 over every step is DDPM ancestral sampling with the posterior variance (beta tilde)."
    s, m = linear_schedule(n_steps=100), TinyNet()
    x_T = noise((2, 1, 8, 8), 0)
    out = sample_ddim(m, x_T, s, steps=100, eta=1., generator=torch.Generator().manual_seed(7), progress=False)
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
    ref = sample_ddpm(m, (2, 1, 8, 8), s, generator=torch.Generator().manual_seed(7), variance='posterior', progress=False)
    out2 = sample_ddim(m, (2, 1, 8, 8), s, steps=100, eta=1., generator=torch.Generator().manual_seed(7), progress=False)
    torch.testing.assert_close(out2, ref, rtol=1e-4, atol=1e-4)


def test_ddim_sample_restores_training_mode_and_unwraps_outputs():
    class Out:
        def __init__(self, sample): self.sample = sample
    class Wrapped(TinyNet):
        def forward(self, x, t): return Out(super().forward(x, t))
    m = Wrapped().train()
    out = sample_ddim(m, (1, 1, 8, 8), linear_schedule(), steps=3, progress=False)
    assert m.training and out.shape == (1, 1, 8, 8) and out.abs().max() <= 1


def test_ddim_sample_accepts_alpha_bar_tensor():
    s, m = linear_schedule(n_steps=50), TinyNet()
    a = sample_ddim(m, noise((1, 1, 8, 8), 0), s, steps=10, progress=False)
    b = sample_ddim(m, noise((1, 1, 8, 8), 0), s, steps=10, progress=False)
    torch.testing.assert_close(a, b)


def test_ddim_sample_validation():
    s, m = linear_schedule(n_steps=50), TinyNet()
    with pytest.raises(TypeError, match='schedule must be'): sample_ddim(m, (1, 1, 8, 8), 'linear', steps=10)
    with pytest.raises(ValueError, match='steps <= 50'): sample_ddim(m, (1, 1, 8, 8), s, steps=51)
    with pytest.raises(ValueError, match='eta'): sample_ddim(m, (1, 1, 8, 8), s, steps=10, eta=-0.1)
    with pytest.raises(ValueError, match='spacing'): sample_ddim(m, (1, 1, 8, 8), s, steps=10, spacing='log')
    with pytest.raises(ValueError, match='shape of positive ints'): sample_ddim(m, (2, 0, 8, 8), s, steps=10)
    with pytest.raises(TypeError, match='positional'): sample_ddim(m, (2, 1, 8, 8), s, 10)  # options are keywords


# ---------------------------------------------------------------- continuous time

def test_abar_cos_shape_of_the_curve():
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    a = abar_cos(t)
    assert a[0] == 1 and (a > 0).all() and (a <= 1).all()
    assert (a.diff() < 0).all()  # strictly decreasing, no flat clamped tail
    assert abs(a[-1].item() - 1e-4) < 1e-12
    assert (a - torch.cos(t * math.pi / 2) ** 2).abs().max() <= 1e-4 + 1e-12
    assert abs(abar_cos(0.5).item() - (0.5 + 1e-4 / 2)) < 1e-6
    assert abar_cos(torch.tensor([0., 1.])).dtype == torch.float32


def test_continuous_noisify_and_x0_from_eps():
    x0 = images(64, 8)
    (x_t, t), eps = noisify(x0, COS, generator=torch.Generator().manual_seed(0))
    assert x_t.shape == x0.shape == eps.shape and t.shape == (64,) and t.is_floating_point()
    assert (t >= 0).all() and (t < 1).all() and t.std() > 0.2
    a = abar_cos(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    keep = t < 0.95
    torch.testing.assert_close(x0_from_eps(x_t, eps, alpha_bar_at(COS, t))[keep], x0[keep], rtol=0, atol=1e-4)
    # the same generator reproduces t and the noise
    (x2, t2), e2 = noisify(x0, COS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and torch.equal(eps, e2)
    # at t=1 the image is (almost) pure noise; at t=0 it is the image
    (x1, _), e1 = noisify(x0, COS, 1.)
    assert (x1 - e1).abs().max() < 0.02
    (xz, tz), _ = noisify(x0, COS, 0.)
    assert torch.equal(xz, x0) and (tz == 0).all()
    with pytest.raises(TypeError, match='continuous time'): noisify(x0[:2], COS, torch.tensor([3, 400]))
    with pytest.raises(ValueError, match=r'\[0, 1\]'): noisify(x0[:2], COS, 1.5)


def test_continuous_callback_trains_with_float_t():
    "DDPMCB given an alpha-bar function: the model sees float t in [0, 1), and the target is the noise."
    seen = []
    class Rec(nn.Module):
        def __init__(self): super().__init__(); self.c = nn.Conv2d(1, 1, 3, padding=1)
        def forward(self, x, t): seen.append(t.detach().clone()); return self.c(x)
    class Grab(Callback):
        order = 100
        def after_loss(self, learn): self.x_t, self.eps, self.preds, self.loss = learn.batch[0][0], learn.batch[1], learn.preds, learn.loss
    x = images(16, 8)
    dls = DataLoaders.from_tensors((x,), (x,), 8)
    cb, grab = DDPMCB(COS), Grab()
    Learner(Rec(), dls, F.mse_loss, lr=1e-3, cbs=[cb, grab, SingleBatchCB()]).fit(1)
    t = seen[0]
    assert t.is_floating_point() and t.shape == (8,) and (t >= 0).all() and (t < 1).all() and t.std() > 0.1
    torch.testing.assert_close(grab.loss, F.mse_loss(grab.preds, grab.eps))  # the target is the noise
    a = bcast_(abar_cos(t.double()), grab.x_t)
    assert not torch.allclose(grab.eps, grab.x_t) and (grab.x_t - (1 - a).sqrt() * grab.eps).abs().max() <= a.sqrt().max() + 1e-5

def bcast_(a, x): return a.float().reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize('eta,spacing', [(0., 'uniform'), (1., 'uniform'), (0.3, 'uniform'), (0., 'quadratic'), (1., 'quadratic')])
@pytest.mark.parametrize('n', [1, 2, 10, 100])
def test_continuous_sampler_with_oracle_returns_x0(eta, spacing, n):
    x0 = images()
    out = sample_ddim(NoiseOracle(x0, COS), noise(x0.shape, 1), COS, steps=n, eta=eta, spacing=spacing,
                      progress=False, generator=torch.Generator().manual_seed(0))
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.parametrize('eta', [0., 1.])
@pytest.mark.parametrize('n', [1, 10, 25])
def test_continuous_time_grid_seen_by_the_model(eta, n):
    spy, seen = Spy(), []
    sample_ddim(spy, (3, 1, 4, 4), COS, steps=n, eta=eta, progress=False, callback=seen.append)
    assert len(spy.ts) == n
    ts = torch.stack([t[0] for t in spy.ts]).double()
    assert all(t.is_floating_point() and t.shape == (3,) for t in spy.ts)
    assert ts[0] == 1  # starts at t = 1
    assert abs(ts[-1] - 1 / n) < 1e-6  # ends next to 0: the last jump lands on t = 0
    torch.testing.assert_close(ts, time_grid(n)[:-1], rtol=0, atol=1e-6)
    assert time_grid(n)[0] == 1 and time_grid(n)[-1] == 0 and seen[-1]['t'] == time_grid(n)[-2].item() and seen[-1]['i'] == n - 1
    q = time_grid(n, 'quadratic')
    assert q[0] == 1 and q[-1] == 0 and (q.diff() < 0).all() and (n == 1 or q[-2] < 1 / n)


def test_continuous_ddim_eta1_is_the_ddpm_posterior_loop():
    "Continuous-time DDPM is sample_ddim(eta=1): compare with a plain loop over the posterior q(x_s | x_t, x0_hat)."
    m, x_T = TinyNet(), noise((2, 1, 8, 8), 0)
    for clip in (True, False):
        out = sample_ddim(m, x_T, COS, steps=30, eta=1., generator=torch.Generator().manual_seed(4), clip=clip, progress=False)
        g, x = torch.Generator().manual_seed(4), x_T.double()
        ts = torch.linspace(1, 0, 31, dtype=torch.float64)
        with torch.no_grad():
            for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
                eps = m(x.float(), torch.full((2,), t.item())).double()
                a_t, a_s = abar_cos(t), abar_cos(s)
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
                if clip: x0 = x0.clamp(-1, 1)
                al = a_t / a_s; be = 1 - al
                mean = a_s.sqrt() * be / (1 - a_t) * x0 + al.sqrt() * (1 - a_s) / (1 - a_t) * x
                if k == 29: x = mean; break  # the last jump (to t=0) adds no noise
                x = mean + ((1 - a_s) / (1 - a_t) * be).sqrt() * torch.randn(x.shape, generator=g).double()
        torch.testing.assert_close(out, x.float(), rtol=1e-4, atol=1e-4)
    c = sample_ddim(m, x_T, COS, steps=30, eta=0., progress=False)
    assert not torch.allclose(out, c, atol=1e-2)


def test_continuous_ddim_eta0_deterministic():
    m, x_T = TinyNet(), noise((2, 1, 8, 8), 0)
    a = sample_ddim(m, x_T, COS, steps=15, generator=torch.Generator().manual_seed(1), progress=False)
    b = sample_ddim(m, x_T, COS, steps=15, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)


def test_continuous_sampler_validation():
    m = TinyNet()
    with pytest.raises(ValueError, match='steps'): sample_ddim(m, (1, 1, 4, 4), COS, steps=0)
    with pytest.raises(ValueError, match='steps'): sample_ddim(m, (1, 1, 4, 4), COS, steps=2.5)
    with pytest.raises(ValueError, match='eta'): sample_ddim(m, (1, 1, 4, 4), COS, eta=2.)
    with pytest.raises(ValueError, match='shape of positive ints'): sample_ddim(m, (2, 0, 4, 4), COS)


# ---------------------------------------------------------------- the two "deep-fried" bugs

def oracle_error(n=20):
    x0 = images()
    out = sample_ddim(NoiseOracle(x0, COS), noise(x0.shape, 1), COS, steps=n, progress=False)
    return (out - x0).abs().max().item()


@pytest.mark.parametrize('eta', [0., 1.])
def test_bug1_random_noise_for_x0_hat_is_caught(monkeypatch, eta):
    "Bug 1: x0_hat computed from torch.randn instead of the predicted noise. The oracle test above fails on it."
    good = x0_from_eps
    x0 = images()
    run = lambda: (sample_ddim(NoiseOracle(x0, COS), noise(x0.shape, 1), COS, steps=20, eta=eta, progress=False) - x0).abs().max().item()
    assert run() < 1e-4
    monkeypatch.setattr(ddim_mod, 'x0_from_eps', lambda x_t, eps, abar_t: good(x_t, torch.randn_like(eps), abar_t))
    assert not run() < 1e-4


def test_bug2_last_step_at_t1_is_caught(monkeypatch):
    "Bug 2: the last step used t=1 instead of t=0. The step's check refuses it; the time-grid test catches the other variant."
    good = time_grid
    monkeypatch.setattr(ddim_mod, 'time_grid', lambda n, spacing='uniform': torch.cat([good(n, spacing)[:-1], torch.ones(1, dtype=torch.float64)]))
    with pytest.raises(ValueError, match='t_prev must be smaller'): oracle_error()
    # the variant where the model itself is called at t=1 for the last step
    monkeypatch.setattr(ddim_mod, 'time_grid', lambda n, spacing='uniform': torch.cat([good(n, spacing)[:-2], torch.tensor([1., 0.], dtype=torch.float64)]))
    with pytest.raises(ValueError, match='t_prev must be smaller'): sample_ddim(Spy(), (1, 1, 4, 4), COS, steps=10, progress=False)


# ---------------------------------------------------------------- the perfect memoriser

def test_dataset_denoiser_samples_training_images():
    data = images(6, 8, seed=3)
    for out in (sample_ddim(DatasetDenoiser(data, COS), (4, 1, 8, 8), COS, steps=10, generator=torch.Generator().manual_seed(0), progress=False),
                sample_ddim(DatasetDenoiser(data, linear_schedule()), (4, 1, 8, 8), linear_schedule(), steps=10,
                            generator=torch.Generator().manual_seed(0), progress=False)):
        d = torch.cdist(out.flatten(1), data.flatten(1)).min(1).values
        assert d.max() < 1e-3
    # with a single image it is the oracle
    one = data[:1]
    (x_t, t), eps = noisify(one, COS, 0.7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(DatasetDenoiser(one, COS)(x_t, t), NoiseOracle(one, COS)(x_t, t))


# ---------------------------------------------------------------- the registry

def test_registry_names_options_and_dispatch():
    assert list(SAMPLERS)[:2] == ['ddpm', 'ddim'] and SAMPLERS['ddpm'] is sample_ddpm and get_sampler('ddim') is sample_ddim
    assert set(SAMPLERS) == {'ddpm', 'ddim', 'euler', 'heun', 'dpmpp_2m', 'dpmpp_2m_sde'}  # the last four: registered by `ode`
    assert sampler_options('ddpm') == dict(clip=True, variance='beta')
    assert sampler_options('ddim') == dict(steps=50, eta=0., spacing='uniform', clip=True)
    with pytest.raises(ValueError, match=r"one of \['ddpm', 'ddim', "): get_sampler('plms')
    s, m = linear_schedule(n_steps=20), TinyNet()
    a = sample(m, (2, 1, 8, 8), s, 'ddim', steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(a, sample_ddim(m, (2, 1, 8, 8), s, steps=5, generator=torch.Generator().manual_seed(0), progress=False))
    b = sample(m, (2, 1, 8, 8), s, generator=torch.Generator().manual_seed(0), progress=False)  # DDPM by default
    torch.testing.assert_close(b, sample_ddpm(m, (2, 1, 8, 8), s, generator=torch.Generator().manual_seed(0), progress=False))
    with pytest.raises(TypeError, match=r"no option 'steps'.*'variance'"): sample(m, (2, 1, 8, 8), s, 'ddpm', steps=5)


def test_generate_batches_seed_and_errors():
    s, m = linear_schedule(n_steps=20), TinyNet().train()
    a = generate(m, s, 5, 'ddim', seed=3, bs=2, progress=False, img_shape=(1, 8, 8), steps=4, eta=1.)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float32 and a.device.type == 'cpu' and a.abs().max() <= 1
    assert m.training  # the sampler restored the mode
    g = torch.Generator().manual_seed(3)  # the same as sampling the batches one after another from one generator
    ref = torch.cat([sample_ddim(m, (k, 1, 8, 8), s, steps=4, eta=1., generator=g, progress=False) for k in (2, 2, 1)])
    torch.testing.assert_close(a, ref.clamp(-1, 1))
    assert torch.equal(a, generate(m, s, 5, 'ddim', seed=3, bs=2, progress=False, img_shape=(1, 8, 8), steps=4, eta=1.))
    assert not torch.equal(a, generate(m, s, 5, 'ddim', seed=4, bs=2, progress=False, img_shape=(1, 8, 8), steps=4, eta=1.))
    for kw, err, msg in [(dict(n=0), ValueError, 'n must be'), (dict(bs=0), ValueError, 'bs must be'),
                         (dict(sampler='x'), ValueError, 'sampler must be one of'), (dict(eta=3.), ValueError, 'eta'),
                         (dict(steps=21), ValueError, 'steps <= 20'), (dict(foo=1), TypeError, 'no option')]:
        with pytest.raises(err, match=msg): generate(m, s, **{'n': 2, 'progress': False, 'img_shape': (1, 8, 8), **kw})
