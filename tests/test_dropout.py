import pytest
import torch
from torch import nn

from ddpm_from_scratch.dropout import Dropout, Dropout2d, TTD_CB, channel_stats, set_dropout_train, ttd_predict

P = 0.3
N, C = 512, 64
TOL = 4 * (P * (1 - P) / (N * C)) ** 0.5   # four binomial standard deviations of the keep rate


def test_dropout_identity_in_eval_and_for_p0():
    x = torch.randn(16, 10)
    d = Dropout(0.5).eval()
    assert torch.equal(d(x), x)
    assert torch.equal(Dropout(0.).train()(x), x)


def test_dropout_keeps_with_1_minus_p_and_rescales():
    torch.manual_seed(0)
    y = Dropout(P).train()(torch.ones(1000, 1000))
    vals = y.unique()
    assert len(vals) == 2 and vals[0] == 0 and vals[1].item() == pytest.approx(1 / (1 - P))
    keep = (y != 0).float().mean().item()
    assert abs(keep - (1 - P)) < 4 * (P * (1 - P) / 1e6) ** 0.5
    assert abs(y.mean().item() - 1) < 0.01


def test_dropout_uses_its_own_p():
    torch.manual_seed(0)
    keep = [(Dropout(p).train()(torch.ones(200_000)) != 0).float().mean().item() for p in (0.1, 0.6)]
    assert keep[0] == pytest.approx(0.9, abs=0.01) and keep[1] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize('p', [-0.1, 1.0, 1.5])
def test_bad_p_rejected(p):
    with pytest.raises(ValueError, match=r'\[0, 1\)'): Dropout(p)


@pytest.mark.parametrize('drop', [Dropout2d(P), nn.Dropout2d(P)], ids=['ours', 'torch'])
def test_dropout2d_semantics(drop):
    torch.manual_seed(1)
    s = channel_stats(drop, n=N, c=C, p=P)
    assert s['all_or_none']
    assert abs(s['keep_rate'] - (1 - P)) < TOL
    assert abs(s['mean'] - 1) < TOL / (1 - P)
    assert s['scale'] == pytest.approx(1 / (1 - P))


def test_plain_dropout_is_not_channelwise():
    torch.manual_seed(0)
    assert not channel_stats(Dropout(P))['all_or_none']


def test_dropout2d_agrees_with_torch_in_distribution():
    "Keep counts per image over many draws: same mean and spread as nn.Dropout2d (binomial(C, 1-p))."
    torch.manual_seed(2)
    x = torch.ones(4000, C, 2, 2)
    ours = (Dropout2d(P).train()(x)[:, :, 0, 0] != 0).float().sum(1)
    theirs = (nn.Dropout2d(P).train()(x)[:, :, 0, 0] != 0).float().sum(1)
    mean, var = C * (1 - P), C * P * (1 - P)
    for k in (ours, theirs):
        assert abs(k.mean() - mean) < 4 * (var / 4000) ** 0.5
        assert abs(k.var() / var - 1) < 0.1


def test_dropout2d_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'): Dropout2d(0.5).train()(torch.ones(3, 4))


def test_ttd_spread_zero_without_randomness_and_positive_with_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), Dropout(0.5), nn.Linear(32, 3))
    x = torch.randn(50, 1, 4, 4)
    mean, spread = ttd_predict(model, x, n=8)
    assert mean.shape == (50, 3) and torch.allclose(mean.sum(-1), torch.ones(50))
    assert (spread > 0).any()
    assert model.training and model[3].training                  # the training flags are restored as they were
    model.eval(); ttd_predict(model, x, n=2)
    assert not model.training and not model[3].training          # dropout is switched back off after an eval model
    with pytest.raises(ValueError, match='no dropout'): ttd_predict(nn.Linear(3, 3), torch.randn(2, 3))


def test_ttd_cb_turns_dropout_on_in_eval():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.eval()
    learn = type('L', (), {'model': model, 'training': False})()
    TTD_CB().before_epoch(learn)
    assert model[1].training and not model[0].training
