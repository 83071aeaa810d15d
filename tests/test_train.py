"The training recipe (`ddpm_from_scratch.train`), in process and on tiny configurations: config, checkpoints, resuming, EMA, learning rate, time budget."
import math, os, stat, time

import pytest
import torch

from ddpm_from_scratch.learner import Callback, CancelFitException
from ddpm_from_scratch.process import Schedule
from ddpm_from_scratch import train
from ddpm_from_scratch.train import (BudgetCB, TrainConfig, WarmupEMA, build_model, build_schedule, fit_recipe, load_checkpoint,
                                     load_model, model_from_checkpoint, train_ddpm, warmup_cosine)

TINY = dict(channels=(8, 16), bs=64, n_train=256, n_steps=50)   # 4 optimiser steps per epoch


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny run of two epochs, with its sample grid."
    out = tmp_path_factory.mktemp('train') / 'run'
    train_ddpm(TrainConfig(epochs=2, **TINY), out, progress=False, n_samples=4)
    return out


def test_train_writes_checkpoint_and_grid(trained):
    ck = load_checkpoint(trained / 'checkpoint.pt')
    assert ck['epoch'] == 2 and ck['step'] == 8 and len(ck['history']) == 2
    assert {'model', 'ema', 'opt', 'config', 'library_version', 'rng'} <= set(ck)
    assert ck['config']['channels'] == (8, 16)
    assert (trained / 'samples.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list(trained.glob('*.tmp'))          # no temporary files left behind
    model, cfg = load_model(trained)
    assert cfg == TrainConfig(epochs=2, **TINY) and not model.training


def test_config_is_the_single_source_of_truth():
    cfg = TrainConfig(channels=(8, 16), n_steps=50, schedule='cosine', n_classes=10)
    m = build_model(cfg)
    assert m.n_classes == 10 and m.config['groups'] == 4               # unet.default_groups((8, 16))
    assert torch.allclose(build_schedule(cfg).alpha_bar, Schedule.cosine(50).alpha_bar)
    assert torch.allclose(build_schedule(TrainConfig(n_steps=50, schedule='linear')).beta, Schedule.linear(n_steps=50).beta)
    for bad in (dict(schedule='quadratic'), dict(n_classes=0), dict(p_uncond=2.), dict(warmup=1.), dict(n_train=8, bs=64),
                dict(epochs=0), dict(precision='fp8'), dict(skip='sum'), dict(mid=-1)):
        with pytest.raises(ValueError): TrainConfig(**bad)
    with pytest.raises(ValueError, match='channels'): build_model(TrainConfig(channels=(3, 5)))
    # checkpoints written before `precision` existed still load
    old = dict(TrainConfig().__dict__); old.pop('precision'); old.pop('total_steps'); old['mixed_precision'] = True
    assert TrainConfig.from_dict(old).precision == 'bf16'


def test_warmup_ema_forgets_the_start_quickly():
    ema = WarmupEMA(0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999
    avg, p = torch.zeros(3), torch.ones(3)
    for n in range(200): avg = ema(avg, p, torch.tensor(n))
    assert (avg > 0.9).all()    # a fixed decay of 0.999 would still be at 1 - 0.999**200 = 0.18


class Weights(Callback):
    "Record the weights after every optimiser step (before the EMA, which runs later in `after_step`)."
    order = -100
    def before_fit(self, learn): self.after = []
    def after_step(self, learn): self.after.append({k: v.detach().clone() for k, v in learn.model.state_dict().items()})


def test_ema_averages_the_weights_after_each_step():
    "The EMA starts as a copy of the first updated weights, then mixes in each new step with the warmed-up decay."
    rec = Weights()
    learn = fit_recipe(TrainConfig(total_steps=3, ema=0.999, precision='fp32', **TINY), cbs=[rec])
    w1, w2, w3 = rec.after
    ema = learn.ema.model.state_dict()
    d1, d2 = WarmupEMA(0.999).decay_at(1), WarmupEMA(0.999).decay_at(2)
    for k, v in ema.items():
        if not v.is_floating_point(): continue
        torch.testing.assert_close(v, d2 * (d1 * w1[k] + (1 - d1) * w2[k]) + (1 - d2) * w3[k], rtol=1e-5, atol=1e-6)


def test_warmup_cosine():
    lrs = [warmup_cosine(s, 1.0, 200, 0.1) for s in range(200)]
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == 1.0 and max(lrs) == 1.0
    assert lrs[20 + 90] == pytest.approx(0.5, abs=0.01)              # half-way through the decay
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:])) and lrs[-1] < 1e-3
    assert warmup_cosine(500, 1.0, 200, 0.1) == 0.                    # past the end


def test_warmup_cosine_closed_form_at_the_edges():
    "Warm-up (s+1)/n_warm, then 0.5 (1 + cos(pi (s - n_warm) / (T - n_warm))): the peak on the first decay step, 0 exactly at T."
    assert [warmup_cosine(s, 2.0, 10, 0.3) for s in range(3)] == pytest.approx([2 / 3, 4 / 3, 2.0])
    for s in (20, 21, 110, 198, 199, 200):
        assert warmup_cosine(s, 1.0, 200, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 20) / 180)), abs=1e-12), s
    assert warmup_cosine(20, 1.0, 200, 0.1) == 1.0 and warmup_cosine(199, 1.0, 200, 0.1) > 0 and warmup_cosine(200, 1.0, 200, 0.1) == 0.


class LRs(Callback):
    order = 100
    def before_fit(self, learn): self.lrs = []
    def after_step(self, learn): self.lrs.append(learn.opt.param_groups[0]['lr'])


def test_the_recipe_follows_the_lr_schedule():
    rec = LRs()
    fit_recipe(TrainConfig(total_steps=10, lr=1e-3, warmup=0.2, **TINY), cbs=[rec])
    assert rec.lrs == pytest.approx([warmup_cosine(s, 1e-3, 10, 0.2) for s in range(10)])


class CutAt(Callback):
    "Stop the fit right after optimiser step `n` and its checkpoint, as a kill at that moment would."
    order = 200   # after CheckpointCB
    def __init__(self, n): self.n = n
    def after_step(self, learn):
        if train.global_step(learn) + 1 == self.n: raise CancelFitException()


def test_cut_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    "A run cut in the middle of an epoch resumes from its checkpoint (weights, optimiser, EMA, RNG, step) to the same end."
    cfg = TrainConfig(total_steps=10, ema=0.9, **TINY)   # 4 steps per epoch: the cut at step 6 is mid-epoch
    a = load_checkpoint(train_ddpm(cfg, tmp_path / 'full', progress=False, n_samples=0))
    (tmp_path / 'cut').mkdir()
    train.fit_recipe(cfg, path=tmp_path / 'cut' / 'checkpoint.pt', ckpt_every=0, cbs=[CutAt(6)])
    cut = load_checkpoint(tmp_path / 'cut')
    assert (cut['step'], cut['epoch'], cut['iter']) == (6, 1, 2)
    b = load_checkpoint(train_ddpm(cfg, tmp_path / 'cut', resume=True, progress=False, n_samples=0))
    assert b['step'] == a['step'] == 10
    for part in ('model', 'ema'):
        for k in a[part]: torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-5, atol=1e-6)
    assert a['history'] == pytest.approx(b['history'], rel=1e-5)


def test_resume_checks(tmp_path, trained, capsys):
    with pytest.raises(ValueError, match='exists'): train_ddpm(TrainConfig(epochs=2, **TINY), trained, progress=False)
    with pytest.raises(ValueError, match='different configuration'):
        train_ddpm(TrainConfig(epochs=2, **{**TINY, 'channels': (16, 32)}), trained, resume=True, progress=False)
    assert load_checkpoint(train_ddpm(TrainConfig(epochs=2, **TINY), trained, resume=True, progress=True))['step'] == 8
    assert 'nothing to do' in capsys.readouterr().out
    p = train_ddpm(TrainConfig(epochs=1, **TINY), tmp_path / 'new', resume=True, progress=True, n_samples=0)
    assert 'starts from the beginning' in capsys.readouterr().out and load_checkpoint(p)['epoch'] == 1


def test_checkpoint_problems_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match='not found'): load_checkpoint(tmp_path / 'nope.pt')
    (tmp_path / 'junk.pt').write_bytes(b'this is not a checkpoint')
    with pytest.raises(ValueError, match='corrupt'): load_checkpoint(tmp_path / 'junk.pt')
    torch.save({'hello': 1}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not a ddpm_from_scratch checkpoint'): load_checkpoint(tmp_path / 'other.pt')
    torch.save({'format': 1, 'config': {'channels': (8, 16), 'n_steps': 50}, 'epoch': 1,
                'model': {'conv_in.weight': torch.zeros(3)}}, tmp_path / 'mismatch.pt')
    with pytest.raises(ValueError, match='do not fit its configuration'): model_from_checkpoint(load_checkpoint(tmp_path / 'mismatch.pt'))


def test_a_failed_run_leaves_no_empty_folder(tmp_path):
    from ddpm_from_scratch.mixed import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match='lower learning rate'):
        train_ddpm(TrainConfig(epochs=1, lr=1e12, **TINY), tmp_path / 'new' / 'nan', progress=False)
    assert not (tmp_path / 'new').exists()   # the failed run removed the folders it created
    (tmp_path / 'old').mkdir()
    with pytest.raises(NonFiniteLossError): train_ddpm(TrainConfig(epochs=1, lr=1e12, **TINY), tmp_path / 'old', progress=False)
    assert (tmp_path / 'old').is_dir()       # ...but not one that was there before


def test_outputs_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try: train_ddpm(TrainConfig(epochs=1, **TINY), tmp_path / 'run', progress=False, n_samples=2)
    finally: os.umask(old)
    for f in ('run/checkpoint.pt', 'run/samples.png'):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o640, f   # 0o666 & ~0o027, not mkstemp's 0o600


def test_dense_layout_rebuilds_from_its_checkpoint(tmp_path):
    "skip='dense', mid=2 (the DDPM layout) reaches the network, and the checkpoint rebuilds that network."
    p = train_ddpm(TrainConfig(epochs=1, skip='dense', mid=2, **TINY), tmp_path / 'dense', progress=False, n_samples=0)
    model, cfg = model_from_checkpoint(load_checkpoint(p))
    assert (cfg.skip, cfg.mid) == ('dense', 2) and (model.config['skip'], model.config['mid']) == ('dense', 2)
    assert len(model.up_levels) == 2 and len(model.mid.blocks) == 2   # an up level at both resolutions, and a middle


def test_precision_is_resolved_and_reported(capsys):
    from ddpm_from_scratch.mixed import native_bf16
    assert fit_recipe(TrainConfig(total_steps=1, precision='fp32', **TINY), progress=True).precision == ('fp32', 'as asked')
    assert 'precision: fp32 (as asked)' in capsys.readouterr().out
    learn = fit_recipe(TrainConfig(total_steps=1, **TINY))
    assert learn.precision[0] == ('bf16' if native_bf16('cpu') else 'fp32')


def test_the_budget_replan_reaches_the_lr_schedule():
    "After the re-plan the learning rate decays over the new step count, not over the first estimate (which ends it at 0)."
    rec = LRs()
    cfg = TrainConfig(total_steps=2, lr=1e-3, **{**TINY, 'n_train': 512})   # 8 steps per epoch: room for 8 steps
    fit_recipe(cfg, cbs=[rec], budget=(time.time() + 10 ** 6, 2))           # a far deadline: the re-plan fills the room, at any speed
    assert rec.lrs == pytest.approx([warmup_cosine(s, 1e-3, 8, cfg.warmup) for s in range(8)])


# ---- the time budget: step counts, never seconds --------------------------------------------------------------

class FakeLearn:
    "Just enough of a Learner for `BudgetCB`: the global step is `iter` within epoch 0."
    def __init__(self): self.epoch, self.iter, self.dls = 0, 0, type('D', (), dict(train=range(10 ** 6)))()


def test_budget_replans_from_the_runs_own_speed():
    "After `at` steps the count is set from the measured seconds per step (steps 2 to `at`), to end by the deadline."
    now, plans = [1000.], []
    cb = BudgetCB(deadline=1000. + 100., at=11, estimate=500, cap=10_000, replan=plans.append, clock=lambda: now[0])
    learn = FakeLearn()
    for step in range(1, 12):
        learn.iter = step - 1
        now[0] += 1. if step > 1 else 5.    # the first step (set-up) is slow and not timed; then 1 s per step
        cb.after_step(learn)
    # at step 11, 1000 + 5 + 10 = 1015: 85 s left at 1 s per step, 97% of it planned: 11 + 82 steps
    assert plans == [11 + int(0.97 * 85)]
    cb = BudgetCB(deadline=1000. + 100., at=2, estimate=500, cap=50, replan=plans.append, clock=lambda: now[0])
    now[0], learn.iter = 1000., 0; cb.after_step(learn); now[0] += 0.1; learn.iter = 1; cb.after_step(learn)
    assert plans[-1] == 50   # never more than the room the run's epochs have


def test_minutes_sets_the_steps_and_replans(tmp_path, monkeypatch, capsys):
    "With a first timing that claims a step takes 20 s, the run plans 2 steps, then re-plans from its real speed up to its cap."
    monkeypatch.setattr(train, 'measure_step_seconds', lambda *a, **k: 20.)
    cfg = TrainConfig(**{**TINY, 'n_train': 512})   # 8 steps per epoch
    ck = load_checkpoint(train_ddpm(cfg, tmp_path / 'b', progress=True, n_samples=0, minutes=1.))
    out = capsys.readouterr().out
    assert 'so about 2 steps' in out and 're-planned after 2 steps' in out
    # the first estimate (2) leaves room for twice as many steps, one epoch: the re-plan fills it
    assert ck['config']['total_steps'] == ck['step'] == 8 and TrainConfig.from_dict(ck['config']).epochs == 1
    again = train_ddpm(cfg, tmp_path / 'b', resume=True, progress=False, n_samples=0, minutes=1.)  # the recorded count
    assert load_checkpoint(again)['step'] == 8
    for bad in (0, -1):
        with pytest.raises(ValueError, match='minutes'): train_ddpm(cfg, tmp_path / 'c', progress=False, minutes=bad)
