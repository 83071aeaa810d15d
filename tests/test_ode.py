"""The sigma samplers (notebook 14) against diffusers' schedulers, step by step, and against DDIM at first order."""
import math

import pytest
import torch

from ddpm_from_scratch.ddim import SAMPLERS, ddim_step, sample, sampler_options
from ddpm_from_scratch.ode import (Denoiser, _dpmpp_2m, karras_sigmas, nfe, sample_dpmpp_2m, sample_dpmpp_2m_sde,
                                   sample_euler, sample_heun, schedule_sigmas, sigma_grid, sigma_to_t)
from ddpm_from_scratch.process import Schedule

SCHED = Schedule.from_name('cosine', 1000)
W = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.3


class Smooth(torch.nn.Module):
    "A smooth stand-in for a noise predictor that depends on x and on the (fractional) step t."
    def forward(self, x, t):
        tt = t.double().reshape(-1, 1, 1, 1) / 1000
        return (torch.tanh(torch.nn.functional.conv2d(x.double(), W.double(), padding=1) * (1 + tt)) + 0.1 * x.double() * tt).to(x.dtype)


MODEL = Smooth()
X = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def diffusers_scheduler(cls, **kw):
    "A diffusers scheduler on our schedule: the same alpha-bar (their betas would rebuild it in float32 arithmetic)."
    s = cls(num_train_timesteps=1000, trained_betas=SCHED.beta.double().numpy(), **kw)
    s.alphas_cumprod = SCHED.alpha_bar.float().clone()
    return s


def rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('karras', [False, True])
def test_euler_matches_diffusers_step_by_step(karras):
    from diffusers import EulerDiscreteScheduler
    s = diffusers_scheduler(EulerDiscreteScheduler, use_karras_sigmas=karras); s.set_timesteps(10)
    x = X * s.init_noise_sigma  # diffusers starts at sigma_max; ours takes x_T in the network's scale
    theirs = []
    for t in s.timesteps:
        x = s.step(MODEL(s.scale_model_input(x, t), t.expand(2)), t, x).prev_sample
        theirs.append(x)
    sig0 = sigma_grid(SCHED, 10, karras)[0][0].item()
    seen = []
    sample_euler(MODEL, X * sig0 / math.sqrt(1 + sig0 ** 2), SCHED, steps=10, karras=karras, progress=False, callback=seen.append)
    sigmas = sigma_grid(SCHED, 10, karras)[0]
    for i, (d, th) in enumerate(zip(seen, theirs)):  # ours reports x in the network's scale: back to sigma's
        assert rel(d['x_prev'] * math.sqrt(1 + sigmas[i + 1].item() ** 2), th) < 1e-5, i


@pytest.mark.parametrize('karras', [False, True])
def test_heun_matches_diffusers(karras):
    from diffusers import HeunDiscreteScheduler
    s = diffusers_scheduler(HeunDiscreteScheduler, use_karras_sigmas=karras); s.set_timesteps(10)
    x = X * s.init_noise_sigma
    theirs = []
    for t in s.timesteps:
        x = s.step(MODEL(s.scale_model_input(x, t), t.expand(2)), t, x).prev_sample
        if s.state_in_first_order: theirs.append(x)  # a whole Heun step done
    sigmas = sigma_grid(SCHED, 10, karras)[0]
    seen = []
    out = sample_heun(MODEL, X * sigmas[0].item() / math.sqrt(1 + sigmas[0].item() ** 2), SCHED, steps=10, karras=karras,
                      progress=False, callback=seen.append)
    for i, (d, th) in enumerate(zip(seen, theirs)):
        assert rel(d['x_prev'] * math.sqrt(1 + sigmas[i + 1].item() ** 2), th) < 1e-5, i
    assert rel(out, x) < 1e-5 and len(seen) == 10


@pytest.mark.parametrize('sde', [False, True])
@pytest.mark.parametrize('karras', [False, True])
def test_dpmpp_2m_matches_diffusers_step_by_step(sde, karras):
    "DPMSolverMultistepScheduler, solver_order=2, dpmsolver++ or sde-dpmsolver++, with the same injected noise."
    from diffusers import DPMSolverMultistepScheduler
    s = diffusers_scheduler(DPMSolverMultistepScheduler, use_karras_sigmas=karras, solver_order=2,
                            algorithm_type='sde-dpmsolver++' if sde else 'dpmsolver++')
    s.set_timesteps(10)
    x, g, theirs = X.clone(), torch.Generator().manual_seed(5), []
    for t in s.timesteps:
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if sde else None
        x = s.step(MODEL(s.scale_model_input(x, t), t.expand(2)), t, x, variance_noise=noise).prev_sample
        theirs.append(x)
    f = sample_dpmpp_2m_sde if sde else sample_dpmpp_2m
    seen = []
    f(MODEL, X.clone(), SCHED, steps=10, karras=karras, progress=False, callback=seen.append, generator=torch.Generator().manual_seed(5))
    assert [d['t'] for d in seen] == s.timesteps.tolist()
    for i, (d, th) in enumerate(zip(seen, theirs)): assert rel(d['x_prev'], th) < 1e-5, i


def _ddim_on(model, x, grid, eta, generator=None):
    with torch.no_grad():
        for t, t_prev in zip(grid, grid[1:] + [-1]):
            eps = model(x, torch.full((len(x),), t))
            x, _ = ddim_step(x, t, t_prev, eps, SCHED, eta, torch.zeros_like(x) if t_prev < 0 else None, False, generator)
    return x


def test_euler_is_ddim_eta0():
    grid = sigma_grid(SCHED, 10)[1].long().tolist()  # 999, 888, ..., 0: whole steps
    torch.testing.assert_close(sample_euler(MODEL, X, SCHED, steps=10, progress=False), _ddim_on(MODEL, X, grid, 0.), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sde', [False, True])
def test_first_order_dpmpp_is_ddim(sde):
    "First-order DPM-Solver++ is DDIM with eta 0; its SDE form is DDIM with eta 1 (the same fresh noise)."
    grid = sigma_grid(SCHED, 10, int_steps=True)[1].long().tolist()
    ours = _dpmpp_2m(MODEL, X, SCHED, torch.Generator().manual_seed(3), False, None, None, 10, False, sde, order=1)
    ref = _ddim_on(MODEL, X, grid, 1. if sde else 0., torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_grids_and_helpers():
    sa = schedule_sigmas(SCHED)
    assert torch.all(sa[1:] > sa[:-1]) and torch.allclose(sigma_to_t(sa[[0, 500, 999]], sa), torch.tensor([0., 500., 999.], dtype=torch.float64))
    k = karras_sigmas(0.1, 10., 5)
    assert math.isclose(k[0].item(), 10.) and math.isclose(k[-1].item(), 0.1) and torch.all(k[1:] < k[:-1])
    for karras in (False, True):
        for int_steps in (False, True):
            s, t = sigma_grid(SCHED, 7, karras, int_steps)
            assert len(s) == 8 and len(t) == 7 and s[-1] == 0 and torch.all(s[1:] < s[:-1]) and torch.all(t[1:] < t[:-1])
    with pytest.raises(TypeError, match='discrete schedule'): sample_euler(MODEL, X, Schedule.continuous(lambda t: 1 - t), steps=3)
    with pytest.raises(ValueError, match='churn'): sample_heun(MODEL, X, SCHED, steps=3, churn=-1)


class Counting(torch.nn.Module):
    def __init__(self, m): super().__init__(); self.m, self.n = m, 0
    def forward(self, x, t): self.n += 1; return self.m(x, t)


@pytest.mark.parametrize('name', ['euler', 'heun', 'dpmpp_2m', 'dpmpp_2m_sde', 'ddim'])
def test_nfe_counts_the_network_calls(name):
    m = Counting(MODEL)
    sample(m, X, SCHED, name, progress=False, steps=7)
    assert m.n == nfe(name, steps=7) and name in SAMPLERS


def test_heun_churn_adds_seeded_noise():
    run = lambda churn, seed: sample_heun(MODEL, X, SCHED, steps=6, churn=churn, progress=False, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(2., 0), run(2., 0)) and not torch.allclose(run(2., 0), run(2., 1))
    assert torch.equal(run(0., 0), run(0., 1))  # no churn: deterministic
    assert 'churn' in sampler_options('heun') and 'karras' in sampler_options('dpmpp_2m_sde')
