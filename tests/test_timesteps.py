"Tests of the per-t loss tools, the recording callback, the time-free U-Net and the noise-level estimate."
import pytest
import torch
from torch import nn

from ddpm_from_scratch.data import DataLoaders
from ddpm_from_scratch.ddim import NoiseOracle
from ddpm_from_scratch.ddpm import DDPMCB, fit_ddpm
from ddpm_from_scratch.process import Schedule, abar_cos, linear_schedule, noisify
from ddpm_from_scratch.sampling import GaussianEps
from ddpm_from_scratch.timesteps import loss_by_t
from ddpm_from_scratch.timesteps import LossByTCB, bucket_edges, estimate_t, noise_std_mad

COS = Schedule.continuous(abar_cos)  # continuous time: the cosine alpha-bar of t in [0, 1]


class Zero(nn.Module):
    def forward(self, x, t): return torch.zeros_like(x)


def images(n=64, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 2 - 1)


# ---- the loss per t on models with known answers ----
def test_loss_by_t_oracle_and_zero():
    s, x = linear_schedule(), images(64)
    assert loss_by_t(NoiseOracle(x, s), x, s, n_buckets=5, bs=64).max() < 1e-10
    L = loss_by_t(Zero(), x, s, n_buckets=5)
    assert L.shape == (5,) and (L - 1).abs().max() < 0.03  # E[eps^2] = 1; 16k values per bucket, std ~0.011


def test_loss_by_t_gaussian_closed_form():
    # x0 ~ N(m, s^2) per pixel: the exact predictor's MSE is abar s^2 / (abar s^2 + 1 - abar); one t per bucket
    sched, m, sd = Schedule.from_beta(torch.linspace(0.01, 0.3, 8)), 0.2, 0.5
    x = m + sd * torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    L = loss_by_t(GaussianEps(sched.alpha_bar, m, sd), x, sched, n_buckets=8)
    ab = sched.alpha_bar
    expect = ab * sd ** 2 / (ab * sd ** 2 + 1 - ab)
    assert expect.max() / expect.min() > 10  # the buckets differ, so matching each one means something
    assert torch.allclose(L, expect, rtol=0.03), (L, expect)


def test_bucket_edges():
    assert bucket_edges(1000, 4) == [0, 250, 500, 750, 1000]
    assert bucket_edges(10, 3) == [0, 3, 7, 10]


# ---- the recording callback ----
def _fit(model, rec=None, n=128, bs=32, seed=0):
    torch.manual_seed(seed)
    x = images(n, 16, seed=1)
    dls = DataLoaders.from_tensors((x,), (x[:bs],), bs, drop_last=True)
    fit_ddpm(model, dls, 1, 1e-3, cb=DDPMCB(linear_schedule(n_steps=100)), cbs=[rec] if rec else [], metrics=False,
             valid=False)
    return model


def test_loss_by_t_cb_records_and_does_not_disturb_training(tiny_unet):
    s, xv = linear_schedule(n_steps=100), images(16, 16, seed=2)
    rec = LossByTCB(xv, s, at=(1, 4), n_buckets=4)
    m1 = _fit(tiny_unet(), rec)
    assert sorted(rec.history) == [0, 1, 4] and rec.n_updates == 4
    assert (rec.history[0] - 1).abs().max() < 0.1  # untrained U-Net: zero output
    assert not torch.allclose(rec.history[4], rec.history[0])  # training moved it
    assert torch.allclose(rec.history[4], loss_by_t(m1, xv, s, 4, seed=1))  # the last record is the final model
    m2 = _fit(tiny_unet())  # same run without the recorder
    for p1, p2 in zip(m1.parameters(), m2.parameters()): assert torch.equal(p1, p2)


def test_loss_by_t_cb_errors():
    with pytest.raises(ValueError, match='must be >= 1'): LossByTCB(images(4), linear_schedule(), at=(0, 10))


# ---- the time ablation's model ----
def test_time_free_unet_ignores_t(tiny_unet):
    m = tiny_unet(randomise=True, time_cond=False)
    assert not hasattr(m, 'time_mlp')  # no time embedding at all
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        a, b, c = m(x, torch.tensor([0, 1, 2])), m(x, torch.tensor([999, 500, 7])), m(x, None)
    assert torch.equal(a, b) and torch.equal(a, c) and a.abs().max() > 0
    mt = tiny_unet(randomise=True)
    with torch.no_grad():
        assert not torch.allclose(mt(x, torch.tensor([0, 1, 2])), mt(x, torch.tensor([999, 500, 7])))  # the control


# ---- reading the noise level off the image ----
def test_noise_std_mad_on_white_noise():
    g = torch.Generator().manual_seed(0)
    for sd in (0.05, 0.3, 1.0):
        est = noise_std_mad(sd * torch.randn(8, 1, 64, 64, generator=g) - 0.5)
        assert ((est / sd) - 1).abs().max() < 0.06, (sd, est)


def test_estimate_t_on_flat_images():
    s = linear_schedule()
    x0 = -torch.ones(16, 1, 32, 32)  # a flat background: neighbour differences are pure noise
    g = torch.Generator().manual_seed(0)
    for t in (20, 100, 300):
        (x_t, _), _ = noisify(x0, s, t=t, generator=g)
        est = estimate_t(x_t, s)
        assert est.dtype == torch.long and est.shape == (16,)
        med = est.float().median().item()
        assert abs(med - t) <= 0.1 * t + 2, (t, med)
        assert torch.equal(estimate_t(x_t, s), est)  # the lesson's alpha_bar tensor works the same


def test_noise_std_mad_and_estimate_t_errors():
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'): noise_std_mad(torch.zeros(32, 32))
    with pytest.raises(TypeError, match='discrete schedule'): estimate_t(torch.zeros(2, 1, 8, 8), COS)
