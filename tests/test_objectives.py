"What the network predicts (noise or v), how the loss weighs the noise levels (uniform or Min-SNR), and the post-hoc EMA."
import math

import numpy as np
import pytest
import torch

from ddpm_from_scratch.ddim import generate
from ddpm_from_scratch.ddpm import DDPMCB, NoisePredictor, eps_from_v, loss_weights, snr, v_from
from ddpm_from_scratch.ode import schedule_sigmas, sigma_to_t
from ddpm_from_scratch.process import Schedule, linear_schedule, noisify
from ddpm_from_scratch.train import (PowerEMACB, TrainConfig, choose_phema, phema_checkpoint, fit_recipe, load_checkpoint, load_model, phema_coefficients,
                                     phema_profiles, phema_snapshots, power_ema_beta, reconstruct_phema, sigma_rel_to_gamma,
                                     train_ddpm)
from ddpm_from_scratch.unet import UNet
from test_train import TINY, CutAt

COMBOS = [('eps', 'uniform'), ('eps', 'min_snr'), ('v', 'uniform'), ('v', 'min_snr')]


def test_v_and_the_noise_from_each_other():
    g = torch.Generator().manual_seed(0)
    x0, eps, a = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g), torch.tensor([.999, .7, .2, 1e-4])
    x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    v = v_from(x0, eps, a)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v[3], -x0[3], rtol=0, atol=5e-2)  # at the noisy end v is minus the image
    torch.testing.assert_close(v[0], eps[0], rtol=0, atol=0.15)  # at the clean end v is the noise


def test_min_snr_weights():
    a = torch.tensor([.9999, .9, .5, .1, 1e-4], dtype=torch.float64)
    s = a / (1 - a)
    torch.testing.assert_close(snr(a), s)
    assert torch.equal(loss_weights(a), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(loss_weights(a, 'eps', 'min_snr', 5.), s.clamp(max=5) / s)
    torch.testing.assert_close(loss_weights(a, 'v', 'min_snr', 5.), s.clamp(max=5) / (s + 1))
    w = loss_weights(a, 'eps', 'min_snr')
    assert w[-1] == 1 and w[0] < 1e-3 and (w[1:] >= w[:-1]).all()  # full weight on the noisy end, little on the clean
    for bad in (dict(pred='x0'), dict(weighting='snr'), dict(weighting='min_snr', gamma=0), dict(gamma=True)):
        with pytest.raises(ValueError): loss_weights(a, **{'pred': 'eps', 'weighting': 'uniform', **bad})


def test_ddpmcb_weighted_loss_is_the_weighted_mse():
    sched = linear_schedule(n_steps=50)
    cb = DDPMCB(sched, pred='v', weighting='min_snr', snr_gamma=2.)
    class Learn: pass
    learn = Learn(); learn.training = True
    x0 = torch.randn(6, 1, 8, 8)
    torch.manual_seed(0); learn.batch = (x0,); cb.before_batch(learn)
    torch.manual_seed(0); (x_t, t), eps = noisify(x0, sched)
    (xi, ti), target, w = learn.batch
    assert torch.equal(xi, x_t) and torch.equal(ti, t)
    a = sched.alpha_bar_at(t)
    torch.testing.assert_close(target, v_from(x0, eps, a))
    torch.testing.assert_close(w, loss_weights(a, 'v', 'min_snr', 2.).float())
    learn.preds = torch.zeros_like(target); cb.get_loss(learn)
    torch.testing.assert_close(learn.loss, (w * (target ** 2).mean((1, 2, 3))).mean())
    plain = DDPMCB(sched); learn.batch = (x0,); plain.before_batch(learn)
    assert len(learn.batch) == 2  # the old recipe's batch, unchanged
    with pytest.raises(ValueError): DDPMCB(sched, pred='x0')


def test_fractional_steps_read_the_schedule_as_the_ode_samplers_do():
    "A float t reaches the wrapper as step / t_scale; its alpha-bar must be the one of the noise level the sampler meant."
    sched = Schedule.cosine(1000)
    net = UNet(channels=(8, 16), n_res=1, attn_res=())
    npred = NoisePredictor(net, sched, 'v')
    sig = schedule_sigmas(sched)
    levels = torch.tensor([sig[0].item(), 0.05, 0.3, 1., 7.5, 60., sig[-1].item()], dtype=torch.float64)
    steps = sigma_to_t(levels, sig)
    got = npred.alpha_bar((steps / net.t_scale).float())
    torch.testing.assert_close(got, 1 / (1 + levels ** 2), rtol=2e-5, atol=0)
    ints = torch.tensor([0, 17, 999])
    torch.testing.assert_close(npred.alpha_bar(ints), sched.alpha_bar_at(ints))
    assert npred.n_classes == net.n_classes and npred.t_scale == net.t_scale  # the network's attributes read through


@pytest.mark.parametrize('pred,weighting', COMBOS)
def test_each_target_and_weighting_trains_samples_and_resumes(tmp_path, pred, weighting):
    cfg = TrainConfig(total_steps=10, ema=0.9, pred=pred, weighting=weighting, phema_every=3, **TINY)
    a = load_checkpoint(train_ddpm(cfg, tmp_path / 'full', progress=False, n_samples=0))
    assert (a['config']['pred'], a['config']['weighting']) == (pred, weighting)
    assert all(math.isfinite(l) for l in a['history'])
    (tmp_path / 'cut').mkdir()
    fit_recipe(cfg, path=tmp_path / 'cut' / 'checkpoint.pt', ckpt_every=0, cbs=[CutAt(7)])
    b = load_checkpoint(train_ddpm(cfg, tmp_path / 'cut', resume=True, progress=False, n_samples=0))
    assert b['step'] == a['step'] == 10
    for part in ('model', 'ema'):
        for k in a[part]: torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-5, atol=1e-6)
    snaps = [p.name for p in phema_snapshots(tmp_path / 'full')]
    assert snaps == [p.name for p in phema_snapshots(tmp_path / 'cut')] == [f'phema-{n:07d}.pt' for n in (3, 6, 9, 10)]
    for n in (9, 10):  # the averages after the cut continue from the checkpoint's
        sa, sb = (torch.load(tmp_path / r / 'phema' / f'phema-{n:07d}.pt', weights_only=True) for r in ('full', 'cut'))
        for x, y in zip(sa['avgs'], sb['avgs']):
            for k in x: torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6)
    model, c = load_model(tmp_path / 'full')
    assert isinstance(model, NoisePredictor) == (pred == 'v') and c.pred == pred
    imgs = generate(model, Schedule.from_name(c.schedule, c.n_steps), 2, 'dpmpp_2m_sde', seed=0, progress=False, steps=5)
    assert imgs.shape == (2, 1, 32, 32) and torch.isfinite(imgs).all()


def test_shipped_checkpoints_predict_the_noise():
    model, cfg = load_model('pretrained')
    assert (cfg.pred, cfg.weighting) == ('eps', 'uniform') and isinstance(model, UNet)


def test_sigma_rel_and_gamma():
    for s in (0.02, 0.05, 0.10, 0.2):
        g = sigma_rel_to_gamma(s)
        assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(s, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01) and sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for bad in (0, -0.1, 0.3, '0.1', True): 
        with pytest.raises(ValueError): sigma_rel_to_gamma(bad)


def test_power_ema_profile_is_the_tracked_average():
    "The profile `phema_profiles` gives is exactly the weight the running update puts on each step."
    g, n = 3.5, 40
    w = np.zeros(n)  # the weight of each step's value in the running average, updated as PowerEMACB does
    for i in range(1, n + 1):
        b = power_ema_beta(g, i); w *= b; w[i - 1] += 1 - b
    np.testing.assert_allclose(phema_profiles([n], [g])[0], w, rtol=1e-12, atol=1e-15)
    assert power_ema_beta(g, 1) == 0 and phema_profiles([n], [g]).sum() == pytest.approx(1)


def test_phema_reconstructs_a_directly_tracked_average(tmp_path):
    "With a snapshot at every step any average lies in their span: a third, tracked directly, is rebuilt to rounding error."
    cfg = TrainConfig(channels=(8, 16), bs=32, n_train=256, n_steps=50, total_steps=12, lr=2e-3)
    third = PowerEMACB(tmp_path / 'direct', every=12, sigma_rels=(0.15,))
    fit_recipe(cfg, cbs=[PowerEMACB(tmp_path / 'phema', every=1), third])
    rebuilt, rel = reconstruct_phema(tmp_path, 0.15, fit=True)
    assert rel < 1e-8
    for k, v in third.avgs[0].items(): torch.testing.assert_close(rebuilt[k], v, rtol=1e-5, atol=1e-6)
    # a tracked length at the last step comes back as that snapshot itself
    last = torch.load(phema_snapshots(tmp_path)[-1], weights_only=True)
    for k, v in last['avgs'][1].items(): torch.testing.assert_close(reconstruct_phema(tmp_path, 0.10)[k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='after the last snapshot'): reconstruct_phema(tmp_path, 0.1, step=13)
    with pytest.raises(ValueError, match='no post-hoc EMA snapshots'): reconstruct_phema(tmp_path / 'direct' / 'none', 0.1)


def test_sparse_snapshots_reach_lengths_between_the_tracked_ones():
    "Snapshots every 1/16 of a run of the two tracked lengths rebuild the profiles between and around them closely."
    steps = np.arange(100, 1601, 100)
    ns, gs = np.repeat(steps, 2), np.tile([sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)], len(steps))
    for s in (0.04, 0.07, 0.12, 0.15):
        g = sigma_rel_to_gamma(s)
        coef = phema_coefficients(ns, gs, 1600, g)
        want = phema_profiles([1600], [g])[0]
        assert np.linalg.norm(coef @ phema_profiles(ns, gs, 1600) - want) / np.linalg.norm(want) < 0.05


def test_choose_phema_writes_the_best_length_as_a_checkpoint(tmp_path):
    cfg = TrainConfig(total_steps=8, pred='v', weighting='min_snr', phema_every=4, **TINY)
    train_ddpm(cfg, tmp_path / 'run', progress=False, n_samples=0)
    scores = iter([3., 1., 2.])
    class FakeEval:  # a stand-in yardstick: the FID of each length in turn
        def fid(self, imgs): assert imgs.shape == (4, 1, 32, 32); return next(scores)
    r = choose_phema(tmp_path / 'run', (0.05, 0.1, 0.15), n=4, evaluator=FakeEval(), steps=3)
    assert r['best'] == 0.1 and r['fids'] == {0.05: 3., 0.1: 1., 0.15: 2.} and r['path'] == tmp_path / 'run' / 'phema-0.1.pt'
    ck = load_checkpoint(r['path'])
    assert ck['phema_sigma_rel'] == 0.1 and 'opt' not in ck
    for k, v in reconstruct_phema(tmp_path / 'run', 0.1).items(): assert torch.equal(ck['ema'][k], v)
    model, c = load_model(r['path'])
    assert isinstance(model, NoisePredictor) and c == TrainConfig.from_dict(load_checkpoint(tmp_path / 'run')['config'])
    assert phema_checkpoint(tmp_path / 'run' / 'checkpoint.pt', 0.05, tmp_path / 'x.pt') == tmp_path / 'x.pt'
