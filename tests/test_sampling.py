import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_from_scratch.process import abar_cos, linear_schedule, noisify
from ddpm_from_scratch.unet import fashion_unet
from ddpm_from_scratch.sampling import GaussianEps, KeepSteps, sample_ddpm, ddpm_step, posterior_coefs, sampling_device, start_noise
from ddpm_from_scratch.timesteps import loss_by_t
from ddpm_from_scratch.process import Schedule

COS = Schedule.continuous(abar_cos)  # continuous time: the cosine alpha-bar of t in [0, 1]


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
    pc = posterior_coefs(linear_schedule(1e-4, 0.01, 50))
    assert all(len(o) == 50 for o in pc)
    assert pc.x0[0].item() == pytest.approx(1) and pc.xt[0].item() == 0 and pc.var[0].item() == 0
    assert (pc.var[1:] > 0).all() and (pc.var <= linear_schedule(1e-4, 0.01, 50).beta + 1e-7).all()


# ---- one step ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('t', [0, 1, 10, 500, 998, 999])
def test_true_noise_recovers_x0_and_posterior_mean(t):
    s = linear_schedule(dtype=torch.float64)
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 1.8 - 0.9
    (xt, _), eps = noisify(x0, s, t=t, generator=g)
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


def test_step_clips_x0_hat():
    s = linear_schedule()
    x, e = torch.full((1, 1, 2, 2), 5.), torch.zeros(1, 1, 2, 2)
    assert ddpm_step(x, 999, e, s, noise=torch.zeros_like(x))[1].max() == 1
    assert ddpm_step(x, 999, e, s, noise=torch.zeros_like(x), clip=False)[1].max() > 100


def test_step_accepts_alpha_bar_tensor_and_refuses_continuous_time():
    s = linear_schedule(dtype=torch.float64)
    xt, eps, z = torch.randn(3, 2, 1, 4, 4, dtype=torch.float64).unbind(0)
    a, _ = ddpm_step(xt, 500, eps, s, noise=z)
    b, _ = ddpm_step(xt, 500, eps, s, noise=z)
    torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match='eta=1'): ddpm_step(xt, 5, eps, COS)


@pytest.mark.parametrize('kw,err,msg', [(dict(t=1000), ValueError, r'\[0, 1000\)'), (dict(t=-1), ValueError, 'lie in'),
                                        (dict(t=1.5), TypeError, 'int'), (dict(variance='x'), ValueError, 'variance'),
                                        (dict(t=torch.tensor([1, 2, 3])), ValueError, r'shape \(2,\)')])
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


def test_sample_shape_and_keep_steps_callback():
    s = linear_schedule(1e-4, 0.01, 20)
    m = ZeroEps()
    m.train()
    out = sample_ddpm(m, (3, 1, 8, 8), s, progress=False)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 8, 8)
    assert m.ts == list(range(19, -1, -1)) and m.training  # every step once, in order; mode restored
    keep = KeepSteps((19, 5, 0))
    final = sample_ddpm(m, (3, 1, 8, 8), s, callback=keep, progress=False)
    assert set(keep.xts) == set(keep.x0s) == {19, 5, 0}
    assert all(v.shape == (3, 1, 8, 8) and v.device.type == 'cpu' for v in [*keep.xts.values(), *keep.x0s.values()])
    assert final.abs().max() <= 1  # zero noise predicted: x0_hat = x_t / sqrt(ab) clipped, and the last step returns it
    torch.testing.assert_close(final, keep.x0s[0])


def test_sample_callback_sees_each_step_in_order():
    s = linear_schedule(1e-4, 0.01, 6)
    seen = []
    out = sample_ddpm(ZeroEps(), (2, 1, 4, 4), s, callback=seen.append, progress=False, generator=torch.Generator().manual_seed(0))
    assert [d['i'] for d in seen] == list(range(6)) and [d['t'] for d in seen] == [5, 4, 3, 2, 1, 0]
    for a, b in zip(seen, seen[1:]): assert torch.equal(a['x_prev'], b['x'])  # x_prev of one step is x of the next
    assert torch.equal(seen[-1]['x_prev'], out)


def test_sample_generator_reproducible_x_T_and_errors():
    s = linear_schedule(1e-4, 0.01, 10)
    a = sample_ddpm(ZeroEps(), (2, 1, 4, 4), s, progress=False, generator=torch.Generator().manual_seed(5))
    b = sample_ddpm(ZeroEps(), (2, 1, 4, 4), s, progress=False, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    # x_T given: the same as drawing it from the generator first
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((2, 1, 4, 4), generator=g)
    torch.testing.assert_close(sample_ddpm(ZeroEps(), x_T, s, progress=False, generator=g), a)
    with pytest.raises(ValueError, match='shape'): sample_ddpm(ZeroEps(), (2, 1, 4.0, 4), s, progress=False)
    with pytest.raises(TypeError, match='x_T must be a float'): sample_ddpm(ZeroEps(), torch.zeros(2, 1, 4, 4, dtype=torch.long), s)
    with pytest.raises(ValueError, match='variance'): sample_ddpm(ZeroEps(), (2, 1, 4, 4), s, variance='x')
    with pytest.raises(TypeError, match='eta=1'): sample_ddpm(ZeroEps(), (2, 1, 4, 4), COS)
    with pytest.raises(ValueError, match='steps'): KeepSteps([-1])


def test_start_noise_and_sampling_device():
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(start_noise((2, 3), g), torch.randn((2, 3), generator=torch.Generator().manual_seed(0)))
    x = torch.ones(2, 3)
    assert start_noise(x) is x and start_noise(x, device='meta').device.type == 'meta'
    assert sampling_device(nn.Linear(1, 1).to('meta'), (2, 3)).type == 'meta'  # the model's device
    assert sampling_device(nn.Linear(1, 1).to('meta'), x).type == 'meta'       # wins over x_T's
    assert sampling_device(ZeroEps.__base__(), x.to('meta')).type == 'meta'     # no parameters: x_T's
    assert sampling_device(lambda x, t: x, (2, 3)).type == 'cpu'                 # a plain function, a shape: the CPU


@pytest.mark.parametrize('variance', ['beta', 'posterior'])
def test_sample_with_exact_predictor_reproduces_gaussian_data(variance):
    "With the exact E[eps | x_t] for x0 ~ N(0.3, 0.2^2), DDPM sampling must return that distribution."
    s = linear_schedule()
    torch.manual_seed(0)
    x = sample_ddpm(GaussianEps(s.alpha_bar, 0.3, 0.2), (4000, 1, 1, 1), s, clip=False, progress=False, variance=variance)
    assert abs(x.mean().item() - 0.3) < 0.015  # standard error 0.2/sqrt(4000) = 0.003
    assert abs(x.std().item() / 0.2 - 1) < 0.06


def test_sample_unwraps_diffusers_output_and_tuple_models():
    s = linear_schedule(1e-4, 0.01, 5)
    for tuple_input in (False, True):
        torch.manual_seed(0)
        m = fashion_unet((8, 16), attention=False, layers_per_block=1, tuple_input=tuple_input)
        out = sample_ddpm(m, (2, 1, 32, 32), s, progress=False)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()


# ---- loss per t ---------------------------------------------------------------------------------------------

def test_loss_by_t_matches_closed_form_for_zero_predictor():
    "A model predicting 0 has loss E[eps^2] = 1 in every bucket."
    s = linear_schedule()
    L = loss_by_t(ZeroEps(), torch.zeros(256, 1, 8, 8), s, n_buckets=4)
    assert L.shape == (4,) and ((L - 1).abs() < 0.05).all()  # 16,384 values of eps^2 per bucket: s.e. 0.011
    # identical for the same seed (paired comparison across models)
    torch.testing.assert_close(L, loss_by_t(ZeroEps(), torch.zeros(256, 1, 8, 8), s, n_buckets=4))


def test_loss_by_t_restores_mode_and_checks_buckets():
    s, m = linear_schedule(n_steps=10), ZeroEps().train()
    loss_by_t(m, torch.zeros(8, 1, 4, 4), s, n_buckets=2)
    assert m.training
    with pytest.raises(ValueError, match='n_buckets'): loss_by_t(m, torch.zeros(8, 1, 4, 4), s, n_buckets=11)
