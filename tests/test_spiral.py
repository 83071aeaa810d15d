import math

import pytest
import torch

from ddpm_from_scratch.ddpm import DDPMCB
from ddpm_from_scratch.process import Schedule, alpha_bar_at, at, noisify, x0_from_eps
from ddpm_from_scratch.sampling import sample_ddpm, ddpm_step, posterior_coefs
from ddpm_from_scratch.spiral import (THETA_MAX, THETA_MIN, SpiralMLP, fit_spiral, loss_history, make_spiral,
                                      posterior_grid, q_iterate, q_step, spiral_curve, spiral_distance, spiral_dls,
                                      spiral_nearest, spiral_schedule)


@pytest.fixture(scope='module')
def sched(): return spiral_schedule()


def gen(seed=0): return torch.Generator().manual_seed(seed)


# The spiral uses the library's process core; these small adapters give the tests the notebook's shapes.
def q_sample(x0, t, sched, noise=None): return noisify(x0, sched, t=t, eps=noise)[0][0]

def posterior(x_t, x0, t, sched):
    "Mean and variance of q(x_{t-1} | x_t, x0) from `posterior_coefs`."
    c = posterior_coefs(sched)
    return at(c.x0, t, x0) * x0 + at(c.xt, t, x_t) * x_t, at(c.var, t, x_t)

def sample_trajectory(model, sched, n, generator=None, **options):
    "sample_ddpm with posterior variance (the spiral's process), keeping x_t before every step: xs (T+1, n, 2), x0s (T, n, 2)."
    xs, x0s = [], []
    def keep(d): xs.append(d['x'].cpu()); x0s.append(d['x0'].cpu())
    x = sample_ddpm(model, (n, 2), sched, generator=generator, progress=False, callback=keep, variance='posterior', **options)
    return torch.stack(xs + [x.cpu()]), torch.stack(x0s)


# --- data ---------------------------------------------------------------------------------------------------------

def test_make_spiral_range_shape_and_seed():
    x = make_spiral(5000, generator=gen())
    assert x.shape == (5000, 2) and x.dtype == torch.float32
    assert x.abs().max() <= 1
    assert x.min() < -0.85 and x.max() > 0.85          # fills the box: normalised, not squashed
    assert torch.equal(x, make_spiral(5000, generator=gen()))
    assert not torch.equal(x, make_spiral(5000, generator=gen(1)))
    # without jitter, every point lies on the curve; with jitter, the mean distance ~ noise * sqrt(2/pi)
    assert spiral_distance(make_spiral(1000, noise=0., generator=gen())).max() < 1e-6
    d = spiral_distance(make_spiral(5000, noise=0.02, generator=gen())).mean().item()
    assert abs(d - 0.02 * math.sqrt(2 / math.pi)) < 0.002, d
    # huge jitter is clipped, not rescaled
    assert make_spiral(1000, noise=1., generator=gen()).abs().max() == 1


def test_make_spiral_bad_input():
    with pytest.raises(ValueError, match='positive int'): make_spiral(0)
    with pytest.raises(ValueError, match='>= 0'): make_spiral(10, noise=-0.1)


def test_curve_box():
    pts = spiral_curve(torch.linspace(THETA_MIN, THETA_MAX, 20_001))
    lo, hi = pts.min(0).values, pts.max(0).values
    assert torch.allclose(lo + hi, torch.zeros(2, dtype=torch.float64), atol=1e-6)   # centred
    assert abs((hi - lo).max().item() - 1.8) < 1e-6                                   # longer side spans 1.8


# --- schedule and forward process -----------------------------------------------------------------------------------

def test_schedule(sched):
    assert isinstance(sched, Schedule) and len(sched) == sched.n_steps == 50 and sched.beta.dtype == torch.float64
    assert torch.allclose(sched.beta, torch.linspace(1e-3, 0.25, 50, dtype=torch.float64))   # as given: no 1000/T rescale
    assert (sched.alpha_bar[1:] < sched.alpha_bar[:-1]).all()
    assert torch.allclose(sched.alpha_bar, torch.cumprod(1 - sched.beta, 0))
    assert sched.alpha_bar[-1].sqrt() < 0.05
    with pytest.raises(ValueError, match='strictly between 0 and 1'): Schedule.from_beta(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match='beta_min'): spiral_schedule(10, 0.3, 0.2)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r'\[0, 50\)'): q_sample(x, 50, sched)
    with pytest.raises(ValueError, match=r'\[0, 50\)'): q_sample(x, torch.tensor([0, 1, -1, 2]), sched)
    with pytest.raises(TypeError, match='integer'): q_sample(x, torch.tensor([0.5] * 4), sched)
    with pytest.raises(ValueError, match=r'\[0, 50\)'): q_step(x, 50, sched)
    with pytest.raises(TypeError, match='int'): q_step(x, 0.5, sched)


def test_forward_step_by_step_matches_shortcut(sched):
    "Iterating q(x_t | x_{t-1}) and jumping with q(x_t | x_0) give the same distribution at every t."
    torch.manual_seed(0)
    x0 = make_spiral(20_000, generator=gen()).double()
    xs = q_iterate(x0, sched)
    assert xs.shape == (len(sched), 20_000, 2)
    for t in [0, 3, 10, 25, 49]:
        a, b = xs[t], q_sample(x0, t, sched)
        ab = sched.alpha_bar[t]
        # moments of the two samples agree, and match the closed form given x0
        assert torch.allclose(a.mean(0), b.mean(0), atol=0.03), t
        assert torch.allclose(a.std(0), b.std(0), rtol=0.03), t
        assert torch.allclose(a.mean(0), ab.sqrt() * x0.mean(0), atol=0.03), t
        resid = a - ab.sqrt() * x0               # what remains must be noise of variance 1 - alpha_bar
        assert torch.allclose(resid.var(0), (1 - ab).expand(2), rtol=0.05), t
        assert (resid * x0).mean().abs() < 0.02   # and independent of x0


def test_q_step_zero_noise(sched):
    x = torch.randn(3, 2, dtype=torch.float64)
    assert torch.allclose(q_step(x, 7, sched, noise=torch.zeros_like(x)), sched.alpha[7].sqrt() * x)


def test_per_row_t(sched):
    x0, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0, 4, 9, 30, 49])
    xt = q_sample(x0, t, sched, eps)
    for i in range(5): assert torch.allclose(xt[i], q_sample(x0[i:i + 1], int(t[i]), sched, eps[i:i + 1])[0])
    assert torch.allclose(x0_from_eps(xt, eps, alpha_bar_at(sched, t)), x0)


# --- posterior ------------------------------------------------------------------------------------------------------

def test_posterior_closed_form(sched):
    "The coefficients are the textbook ones, written out here independently."
    for t in [1, 7, 30, 49]:
        b, a = sched.beta[t].item(), 1 - sched.beta[t].item()
        ab = math.prod(1 - o for o in sched.beta[:t + 1].tolist()); ab_prev = ab / a
        m, v = posterior(torch.tensor([1.]).double(), torch.tensor([0.]).double(), t, sched)
        assert math.isclose(m.item(), math.sqrt(a) * (1 - ab_prev) / (1 - ab), rel_tol=1e-9)
        assert math.isclose(v.item(), b * (1 - ab_prev) / (1 - ab), rel_tol=1e-9)
        m, _ = posterior(torch.tensor([0.]).double(), torch.tensor([1.]).double(), t, sched)
        assert math.isclose(m.item(), b * math.sqrt(ab_prev) / (1 - ab), rel_tol=1e-9)


@pytest.mark.parametrize('t,xt,x0', [(1, 0.3, -0.5), (2, -0.1, 0.9), (10, 1.2, 0.4), (30, -0.7, 0.9), (49, 2.5, -1.0)])
def test_posterior_matches_product_of_gaussians_on_a_grid(sched, t, xt, x0):
    gm, gv = posterior_grid(xt, x0, t, sched)
    m, v = posterior(torch.tensor([xt]).double(), torch.tensor([x0]).double(), t, sched)
    assert abs(m.item() - gm) < 1e-7 and abs(v.item() - gv) < 1e-7 * max(1, gv)


@pytest.mark.parametrize('t', [1, 5, 20, 49])
def test_posterior_matches_monte_carlo_regression(sched, t):
    "Simulate x0, x_{t-1} | x0, x_t | x_{t-1}; regressing x_{t-1} on (x_t, x0) recovers the posterior."
    g, n = gen(t), 400_000
    x0 = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    x_prev = q_sample(x0, t - 1, sched, noise=torch.randn(n, 1, generator=g, dtype=torch.float64))
    x_t = q_step(x_prev, t, sched, noise=torch.randn(n, 1, generator=g, dtype=torch.float64))
    A = torch.cat([x_t, x0], 1)
    coef = torch.linalg.lstsq(A, x_prev).solution.squeeze()
    resid_var = (x_prev - A @ coef[:, None]).var().item()
    c = posterior_coefs(sched)
    assert abs(coef[0] - c.xt[t]) < 0.01 and abs(coef[1] - c.x0[t]) < 0.01
    assert abs(resid_var / c.var[t].item() - 1) < 0.02


def test_posterior_first_step_is_the_data(sched):
    x0, xt = torch.randn(6, 2), torch.randn(6, 2)
    m, v = posterior(xt, x0, 0, sched)
    assert torch.allclose(m, x0, atol=1e-6) and v == 0
    with pytest.raises(ValueError): posterior_grid(0., 0., 0, sched)


class Oracle(torch.nn.Module):
    "Predicts exactly the noise that separates x_t from sqrt(alpha_bar) * target."
    def __init__(self, target, sched):
        super().__init__(); self.target, self.sched = torch.nn.Parameter(target, requires_grad=False), sched
    def forward(self, x, t):
        ab = self.sched.alpha_bar.float()[t][:, None]
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


def test_sampling_with_an_oracle_lands_on_the_target(sched):
    target = torch.tensor([0.5, -0.25])
    xs, x0s = sample_trajectory(Oracle(target, sched), sched, n=64, generator=gen())
    assert xs.shape == (51, 64, 2) and x0s.shape == (50, 64, 2)
    assert torch.allclose(x0s, target.expand_as(x0s), atol=1e-4)
    assert torch.allclose(xs[-1], target.expand(64, 2), atol=1e-5)


def test_clipping(sched):
    target = torch.tensor([3., 0.])                  # outside the data range
    x = torch.randn(16, 2)
    eps = Oracle(target, sched)(x, torch.full((16,), 20))
    _, x0_clip = ddpm_step(x, 20, eps, sched, clip=True)
    _, x0_raw = ddpm_step(x, 20, eps, sched, clip=False)
    assert torch.allclose(x0_raw[:, 0], torch.tensor(3.), atol=1e-4) and (x0_clip[:, 0] == 1).all()


def test_reverse_step_is_the_posterior_with_the_guess(sched):
    "With variance='posterior' a reverse step is q(x_{t-1} | x_t, x0_hat): mean plus sqrt(beta tilde) times the noise."
    x, z = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    for t in (0, 1, 30, 49):
        eps = torch.randn(6, 2, dtype=torch.float64)
        x0_hat = x0_from_eps(x, eps, alpha_bar_at(sched, t)).clamp(-1, 1)
        m, v = posterior(x, x0_hat, t, sched)
        x_prev, x0_lib = ddpm_step(x, t, eps, sched, noise=z, variance='posterior')
        assert torch.allclose(x0_lib, x0_hat) and torch.allclose(x_prev, m + v.sqrt() * z), t


# --- model ----------------------------------------------------------------------------------------------------------

def test_time_embedding_tells_the_50_steps_apart():
    "The MLP reads t through the U-Net's `timestep_embedding`: at the spiral's 50 steps every code is distinct."
    from ddpm_from_scratch.unet import timestep_embedding
    e = timestep_embedding(torch.arange(50), 64)
    assert e.shape == (50, 64)
    assert torch.allclose(e[0], torch.cat([torch.zeros(32), torch.ones(32)]))
    assert torch.allclose(e.pow(2).view(50, 2, 32).sum(1), torch.ones(50, 32), atol=1e-5)   # sin^2 + cos^2
    assert torch.cdist(e, e)[~torch.eye(50, dtype=bool)].min() > 0.1                          # all steps distinct


def test_mlp_shapes_and_time_dependence():
    torch.manual_seed(0)
    m = SpiralMLP(d_hidden=32, n_layers=3)
    x = torch.randn(8, 2)
    out0, out1 = m(x, torch.zeros(8, dtype=torch.long)), m(x, torch.full((8,), 40))
    assert out0.shape == (8, 2) and not torch.allclose(out0, out1)
    with pytest.raises(ValueError, match=r'\(B, 2\)'): m(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match='t must have shape'): m(x, torch.zeros(7, dtype=torch.long))


def test_noisify_points(sched):
    "The core's noisify on (B, 2) points: t uniform in [0, T), unit noise, seeded."
    x0 = make_spiral(10_000, generator=gen())
    (xt, t), eps = noisify(x0, sched, generator=gen(1))
    assert xt.shape == x0.shape and xt.dtype == x0.dtype and t.dtype == torch.int64
    assert 0 <= t.min() and t.max() < len(sched) and len(t.unique()) == len(sched)
    ab = sched.alpha_bar[t].float()[:, None]
    assert torch.allclose(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-6)
    assert abs(eps.std().item() - 1) < 0.03
    (xt2, t2), eps2 = noisify(x0, sched, generator=gen(1))
    assert torch.equal(xt, xt2) and torch.equal(t, t2) and torch.equal(eps, eps2)


def test_ddpmcb_feeds_the_mlp_points():
    "DDPMCB turns a batch (x0,) of points into ((x_t, t), eps) and calls model(x_t, t)."
    sched = spiral_schedule()
    cb, model = DDPMCB(sched), SpiralMLP(d_hidden=16, n_layers=2)
    learn = type('L', (), {'batch': (make_spiral(32, generator=gen()),), 'model': model, 'training': True})()
    cb.before_batch(learn)
    (x_t, t), eps = learn.batch
    assert x_t.shape == eps.shape == (32, 2) and t.shape == (32,) and t.dtype == torch.int64
    cb.predict(learn)
    assert learn.preds.shape == (32, 2)


# --- the yardstick --------------------------------------------------------------------------------------------------

def unit_normal(theta):
    from ddpm_from_scratch.spiral import _spiral_derivs
    d1 = _spiral_derivs(theta)[0]
    return torch.stack([-d1[:, 1], d1[:, 0]], -1) / d1.norm(dim=-1, keepdim=True)


def test_distance_zero_on_the_curve():
    th = THETA_MIN + (THETA_MAX - THETA_MIN) * torch.rand(500, generator=gen(), dtype=torch.float64)
    th_hat, d = spiral_nearest(spiral_curve(th))
    assert d.max() < 1e-9 and torch.allclose(th_hat, th, atol=1e-6)


@pytest.mark.parametrize('offset', [0.01, 0.05, -0.05, 0.1])
def test_distance_of_a_known_offset(offset):
    th = torch.linspace(2 * math.pi, 4 * math.pi, 41, dtype=torch.float64)
    p = spiral_curve(th) + offset * unit_normal(th)
    assert torch.allclose(spiral_distance(p), torch.tensor(abs(offset), dtype=torch.float64), atol=1e-9)


def test_distance_beyond_the_ends_and_far_away():
    # past the outer end, along the tangent: the end point is the nearest
    th = torch.tensor([THETA_MAX], dtype=torch.float64)
    from ddpm_from_scratch.spiral import _spiral_derivs
    tang = _spiral_derivs(th)[0]; tang = tang / tang.norm()
    assert abs(spiral_distance(spiral_curve(th) + 0.2 * tang).item() - 0.2) < 1e-9
    # arbitrary points: agree with a brute-force search over 400,000 angles (about 1.6e-5 apart along the curve)
    p = torch.randn(200, 2, generator=gen(), dtype=torch.float64) * 1.5
    curve = spiral_curve(torch.linspace(THETA_MIN, THETA_MAX, 400_001, dtype=torch.float64))
    brute = torch.cat([torch.cdist(pc, curve).min(1).values for pc in p.split(50)])
    d = spiral_distance(p)
    assert (d <= brute + 1e-9).all() and (brute - d).max() < 1e-6


def test_distance_shapes_and_errors():
    assert spiral_distance(torch.zeros(3, 4, 2)).shape == (3, 4)
    assert spiral_distance(torch.zeros(0, 2)).shape == (0,)
    with pytest.raises(ValueError, match='last dimension of size 2'): spiral_distance(torch.zeros(5, 3))


# --- training -------------------------------------------------------------------------------------------------------

def test_short_training_beats_the_noise(sched):
    torch.manual_seed(0)
    model = SpiralMLP()
    learn = fit_spiral(model, sched, spiral_dls(n_train=100_000, batch_size=512), n_epochs=4, progress=False)
    hist = loss_history(learn)
    assert len(hist['train']) == len(hist['valid']) == 4
    assert hist['valid'][-1] < hist['valid'][0] < 0.5
    xs, x0s = sample_trajectory(model, sched, n=2000, generator=gen())
    d_noise, d_samples = spiral_distance(xs[0]).mean().item(), spiral_distance(xs[-1]).mean().item()
    assert d_noise > 0.45                    # N(0, I) points are far from the curve on average
    assert d_samples < 0.35 * d_noise, (d_samples, d_noise)
