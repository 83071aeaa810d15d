import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_from_scratch.ddpm import band_t_weights, fashion_unet, linear_schedule, noisify
from ddpm_from_scratch.sampling import (GaussianEps, compare_t_weighting, ddpm_quality, ddpm_step, loss_by_t,
                                        posterior_coefs, predict_x0, sample, t_weighting_table)

torch.set_num_threads(1)


# ---- posterior coefficients --------------------------------------------------------------------------------

def closed_form(beta_min=1e-4, beta_max=0.02, T=1000):
    "The posterior coefficients computed independently, with a Python loop in float64."
    beta = np.linspace(beta_min, beta_max, T)
    c0, ct, var = [], [], []
    ab_prev = 1.0
    for b in beta:
        a = 1 - b
        ab = ab_prev * a
        c0.append(math.sqrt(ab_prev) * b / (1 - ab))
        ct.append(math.sqrt(a) * (1 - ab_prev) / (1 - ab))
        var.append((1 - ab_prev) / (1 - ab) * b)
        ab_prev = ab
    return np.array(c0), np.array(ct), np.array(var)


def test_posterior_coefs_equal_closed_form():
    pc = posterior_coefs(linear_schedule(dtype=torch.float64))
    for got, want in zip(pc, closed_form()):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-14)
    # float32 schedule: same values to float32 precision
    pc32 = posterior_coefs(linear_schedule())
    assert pc32.x0.dtype == torch.float32
    for got, want in zip(pc32, closed_form()): np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-7)


def test_posterior_coefs_last_step_and_shapes():
    pc = posterior_coefs(linear_schedule(1e-3, 0.2, 50))
    assert all(len(o) == 50 for o in pc)
    assert pc.x0[0].item() == pytest.approx(1) and pc.xt[0].item() == 0 and pc.var[0].item() == 0
    assert (pc.var[1:] > 0).all() and (pc.var <= linear_schedule(1e-3, 0.2, 50).beta + 1e-7).all()


# ---- one step ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('t', [0, 1, 10, 500, 998, 999])
def test_true_noise_recovers_x0_and_posterior_mean(t):
    s = linear_schedule(dtype=torch.float64)
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 1.8 - 0.9
    (xt, _), eps = noisify(x0, s.alpha_bar, t=t, generator=g)
    prev, x0_hat = ddpm_step(xt, t, eps, s, noise=torch.zeros_like(x0))
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    c0, ct, _ = (o[t] for o in closed_form())
    torch.testing.assert_close(prev, c0 * x0 + ct * xt, rtol=0, atol=1e-9)


def test_step_equals_algorithm_2_without_clipping():
    s = linear_schedule(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)  # any prediction, not the true noise
    z = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    for t in (1, 300, 999):
        got, _ = ddpm_step(xt, t, eps, s, noise=z, clip=False)
        want = (xt - s.beta[t] / (1 - s.alpha_bar[t]).sqrt() * eps) / s.alpha[t].sqrt() + s.sigma[t] * z
        torch.testing.assert_close(got, want)


def test_step_noise_scale_and_last_step():
    s = linear_schedule(dtype=torch.float64)
    xt, eps = torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    z = torch.ones_like(xt)
    pc = posterior_coefs(s)
    t = 400
    mean, _ = ddpm_step(xt, t, eps, s, noise=torch.zeros_like(xt))
    torch.testing.assert_close(ddpm_step(xt, t, eps, s, noise=z)[0] - mean, s.sigma[t] * z)
    torch.testing.assert_close(ddpm_step(xt, t, eps, s, noise=z, variance='posterior')[0] - mean, pc.var[t].sqrt() * z)
    # t=0 adds no noise whatever noise is passed
    torch.testing.assert_close(ddpm_step(xt, 0, eps, s, noise=z)[0], ddpm_step(xt, 0, eps, s, noise=0 * z)[0])


def test_step_with_per_sample_t_matches_scalar_t():
    s = linear_schedule()
    xt, eps, z = torch.randn(3, 3, 1, 4, 4).unbind(0)
    ts = torch.tensor([0, 5, 999])
    both, x0b = ddpm_step(xt, ts, eps, s, noise=z)
    for i, t in enumerate(ts.tolist()):
        one, x01 = ddpm_step(xt[i:i+1], t, eps[i:i+1], s, noise=z[i:i+1])
        torch.testing.assert_close(both[i:i+1], one); torch.testing.assert_close(x0b[i:i+1], x01)


def test_predict_x0_clips():
    ab = linear_schedule().alpha_bar
    x = predict_x0(torch.full((1, 1, 2, 2), 5.), 999, torch.zeros(1, 1, 2, 2), ab)
    assert x.max() == 1
    assert predict_x0(torch.full((1, 1, 2, 2), 5.), 999, torch.zeros(1, 1, 2, 2), ab, clip=False).max() > 100


@pytest.mark.parametrize('kw,err,msg', [(dict(t=1000), ValueError, r'\[0, 1000\)'), (dict(t=-1), ValueError, 'lie in'),
                                        (dict(t=1.5), TypeError, 'int'), (dict(variance='x'), ValueError, 'variance')])
def test_step_errors(kw, err, msg):
    args = dict(x_t=torch.zeros(2, 1, 4, 4), eps_pred=torch.zeros(2, 1, 4, 4), schedule=linear_schedule(), t=3)
    with pytest.raises(err, match=msg): ddpm_step(**{**args, **kw})


def test_step_shape_mismatch():
    with pytest.raises(ValueError, match='eps_pred has shape'):
        ddpm_step(torch.zeros(2, 1, 4, 4), 3, torch.zeros(2, 1, 4, 3), linear_schedule())


# ---- sample ------------------------------------------------------------------------------------------------

class ZeroEps(nn.Module):
    "Predicts zero noise; counts calls and records the t it saw."
    def __init__(self):
        super().__init__(); self.w = nn.Parameter(torch.zeros(())); self.ts = []
    def forward(self, x, t):
        self.ts.append(int(t[0])); assert t.dtype == torch.int64 and t.shape == (len(x),)
        return x * self.w


def test_sample_shape_and_keeps_only_requested_steps():
    s = linear_schedule(1e-3, 0.2, 20)
    m = ZeroEps()
    m.train()
    out = sample(m, (3, 1, 8, 8), s, progress=False)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 8, 8)
    assert m.ts == list(range(19, -1, -1)) and m.training  # every step once, in order; mode restored
    final, xts, x0s = sample(m, (3, 1, 8, 8), s, keep_steps=(19, 5, 0), progress=False)
    assert set(xts) == set(x0s) == {19, 5, 0}
    assert all(v.shape == (3, 1, 8, 8) and v.device.type == 'cpu' for v in [*xts.values(), *x0s.values()])
    assert final.abs().max() <= 1  # zero noise predicted: x0_hat = x_t / sqrt(ab) clipped, and the last step returns it
    torch.testing.assert_close(final, x0s[0])


def test_sample_generator_reproducible_and_errors():
    s = linear_schedule(1e-3, 0.2, 10)
    a = sample(ZeroEps(), (2, 1, 4, 4), s, progress=False, generator=torch.Generator().manual_seed(5))
    b = sample(ZeroEps(), (2, 1, 4, 4), s, progress=False, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='keep_steps'): sample(ZeroEps(), (2, 1, 4, 4), s, keep_steps=[10], progress=False)
    with pytest.raises(ValueError, match='shape'): sample(ZeroEps(), (2, 1, 4.0, 4), s, progress=False)


@pytest.mark.parametrize('variance', ['beta', 'posterior'])
def test_sample_with_exact_predictor_reproduces_gaussian_data(variance):
    "With the exact E[eps | x_t] for x0 ~ N(0.3, 0.2^2), DDPM sampling must return that distribution."
    s = linear_schedule()
    torch.manual_seed(0)
    x = sample(GaussianEps(s.alpha_bar, 0.3, 0.2), (4000, 1, 1, 1), s, clip=False, progress=False, variance=variance)
    assert abs(x.mean().item() - 0.3) < 0.015  # standard error 0.2/sqrt(4000) = 0.003
    assert abs(x.std().item() / 0.2 - 1) < 0.06


def test_sample_unwraps_diffusers_output_and_tuple_models():
    s = linear_schedule(1e-3, 0.2, 5)
    for tuple_input in (False, True):
        torch.manual_seed(0)
        m = fashion_unet((8, 16), attention=False, layers_per_block=1, tuple_input=tuple_input)
        out = sample(m, (2, 1, 32, 32), s, progress=False)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()


# ---- loss per t and the t-weighting comparison -------------------------------------------------------------

def test_loss_by_t_matches_closed_form_for_zero_predictor():
    "A model predicting 0 has loss E[eps^2] = 1 in every bucket."
    s = linear_schedule()
    L = loss_by_t(ZeroEps(), torch.zeros(256, 1, 8, 8), s, n_buckets=4)
    assert L.shape == (4,) and ((L - 1).abs() < 0.05).all()  # 16,384 values of eps^2 per bucket: s.e. 0.011
    # identical for the same seed (paired comparison across models)
    torch.testing.assert_close(L, loss_by_t(ZeroEps(), torch.zeros(256, 1, 8, 8), s, n_buckets=4))


def test_compare_t_weighting_smoke():
    res = compare_t_weighting({'uniform': None, 'high': band_t_weights(1000, 700, p=0.7)}, n_train=64, n_valid=8,
                              bs=32, n_buckets=2)
    assert set(res) == {'uniform', 'high'} and res['high']['loss_by_t'].shape == (2,)
    tab = t_weighting_table(res)
    assert 'high/uniform' in tab and len(tab.splitlines()) == 4


# ---- the quality path (short run of the same code) -----------------------------------------------------------

def test_ddpm_quality_short_run():
    from ddpm_from_scratch.data import fashion_tensors
    from ddpm_from_scratch.fid import ImageEval
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(1, 8, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ev = ImageEval(feats, fashion_tensors('test')[0][-256:], kid_n=256)
    q = ddpm_quality(fashion_unet((8, 16), attention=False, layers_per_block=1), fashion_tensors('train')[0][:64],
                     n_epochs=1, bs=32, n_steps=10, beta_min=1e-3, beta_max=0.3, n_samples=6, sample_bs=4, evaluator=ev)
    assert q['samples'].shape == (6, 1, 32, 32) and q['samples'].abs().max() <= 1
    assert q['n_updates'] == 2 and set(q['scores']) >= {'fid', 'kid'} and math.isfinite(q['scores']['fid'])
    assert q['floor']['n'] == 6
