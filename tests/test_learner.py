import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from ddpm_from_scratch.data import DataLoaders
from ddpm_from_scratch.learner import (ActivationStats, CancelBatchException, CancelEpochException,
                                       CancelFitException, Callback, DeviceCB, GeneralRelu, Learner, LRFinderCB,
                                       MetricsCB, ProgressCB, SingleBatchCB, TrainCB, one_cycle, synthetic_regression)


class EventLog(Callback):
    "Records every event it sees, tagged with its name."
    events = ['before_fit', 'after_fit', 'cleanup_fit', 'before_epoch', 'after_epoch', 'cleanup_epoch',
              'before_batch', 'after_batch', 'cleanup_batch', 'after_predict', 'after_loss', 'after_step']
    def __init__(self, name, order, log): self.name, self.order, self.log = name, order, log
    def __getattr__(self, nm):
        if nm in self.events: return lambda learn: self.log.append((self.name, nm))
        raise AttributeError(nm)


def tiny_dls(n_train=4, n_valid=2):
    "Batches of one item each, so batch counts are easy to reason about."
    x = torch.randn(n_train + n_valid, 1); y = 2 * x
    return DataLoaders.from_tensors((x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), 1)


def test_callback_order_is_respected():
    log = []
    cbs = [EventLog('late', 5, log), EventLog('early', -1, log), EventLog('mid', 0, log)]
    Learner(nn.Linear(1, 1), tiny_dls(1, 1), cbs=cbs).fit(1)
    for ev in ('before_fit', 'before_batch', 'after_epoch', 'after_fit'):
        assert [n for n, e in log if e == ev][:3] == ['early', 'mid', 'late'], ev


def test_batch_stages_order():
    log = []
    Learner(nn.Linear(1, 1), tiny_dls(1, 0), cbs=[EventLog('a', 0, log)]).fit(1, valid=False)
    assert [e for _, e in log] == ['before_fit', 'before_epoch', 'before_batch', 'after_predict', 'after_loss',
                                   'after_step', 'after_batch', 'cleanup_batch', 'after_epoch', 'cleanup_epoch',
                                   'after_fit', 'cleanup_fit']


class Raiser(Callback):
    def __init__(self, exc, at_iter=1): self.exc, self.at_iter = exc, at_iter
    def before_batch(self, learn):
        if learn.training and learn.iter == self.at_iter: raise self.exc()


@pytest.mark.parametrize('exc,expect', [
    # (exception, (train batches completed per epoch list, epochs finished, after_fit ran))
    (CancelBatchException, 'batch'), (CancelEpochException, 'epoch'), (CancelFitException, 'fit')])
def test_cancel_exceptions_stop_exactly_their_scope(exc, expect):
    log = []
    Learner(nn.Linear(1, 1), tiny_dls(4, 2), cbs=[Raiser(exc), EventLog('l', 1, log)]).fit(2)
    ev = [e for _, e in log]
    n_after_batch, n_cleanup_batch = ev.count('after_batch'), ev.count('cleanup_batch')
    assert ev[-1] == 'cleanup_fit'
    if expect == 'batch':   # one training batch per epoch skipped; everything else runs
        assert n_after_batch == 2 * (4 - 1 + 2) and n_cleanup_batch == 2 * (4 + 2)
        assert ev.count('after_epoch') == 4 and 'after_fit' in ev
    if expect == 'epoch':   # training epoch stops after 1 batch, validation epoch still runs, fit continues
        assert ev.count('after_epoch') == 2 and ev.count('cleanup_epoch') == 4
        assert n_after_batch == 2 * (1 + 2) and 'after_fit' in ev
    if expect == 'fit':     # stops at the first epoch's 2nd batch; no after_fit, but all cleanups
        assert 'after_fit' not in ev and 'after_epoch' not in ev
        assert ev.count('cleanup_epoch') == 1 and n_after_batch == 1


def test_device_cb_moves_nested_batches():
    seen = {}
    class Spy(Callback):
        order = DeviceCB.order + 1
        def before_batch(self, learn): seen['batch'] = learn.batch
    class TupleIn(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(1, 1)
        def forward(self, xs): return self.lin(xs[0]) + self.lin(xs[1]['b'])
    x = torch.randn(4, 1)
    ds = [((x[i], {'b': x[i]}), 2 * x[i]) for i in range(4)]
    dl = torch.utils.data.DataLoader(ds, batch_size=2)
    cb = DeviceCB('cpu'); learn = type('L', (), {})()
    learn.model = TupleIn(); learn.batch = next(iter(dl))
    cb.before_fit(learn); cb.before_batch(learn)
    (xs, y) = learn.batch
    assert xs[0].device.type == 'cpu' and xs[1]['b'].device.type == 'cpu' and isinstance(xs[1], dict)
    # and with the Learner, end to end
    Learner(TupleIn(), DataLoaders(dl, dl), cbs=[DeviceCB('cpu'), Spy()]).fit(1)
    assert isinstance(seen['batch'][0][1], dict)


def test_metrics_cb_matches_manual_computation():
    torch.manual_seed(0)
    x = torch.randn(50, 3); y = torch.randint(0, 3, (50,))
    dls = DataLoaders.from_tensors((x, y), (x, y), 16)   # 16, 16, 16, 2: unequal batches test the weighting
    model = nn.Linear(3, 3)
    m = MetricsCB(acc=MulticlassAccuracy())
    Learner(model, dls, F.cross_entropy, lr=0., cbs=[m]).fit(1)   # lr 0: the model does not change
    with torch.no_grad(): logits = model(x)
    valid = [h for h in m.history if h['train'] == 'eval'][0]
    assert valid['loss'] == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-4)
    assert valid['acc'] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-4)


def test_fitting_regression_lowers_loss():
    torch.manual_seed(0)
    m = MetricsCB()
    learn = Learner(nn.Linear(1, 1), synthetic_regression(), lr=0.1, cbs=[m, ProgressCB(bars=False)])
    learn.fit(3)
    losses = [h['loss'] for h in m.history if h['train'] == 'eval']
    assert losses[-1] < 0.05 < losses[0]
    assert learn.model.weight.item() == pytest.approx(3, abs=0.1)


def test_lr_finder_stops_when_loss_blows_up():
    torch.manual_seed(0)
    learn = Learner(nn.Linear(1, 1), synthetic_regression(4096, bs=16), lr=0.1)
    cb = learn.lr_find(gamma=1.5, max_epochs=20)
    n_batches = 20 * (4096 * 3 // 4 // 16)
    assert len(cb.losses) < n_batches                     # it stopped early
    assert not math.isfinite(cb.smooth[-1]) or cb.smooth[-1] > 3 * cb.min
    assert cb.lrs[-1] > 1.0 > cb.lrs[0]                  # it got there by raising the lr


def test_stage_override_by_higher_order_callback():
    calls = []
    class MyBackward(Callback):
        order = 5
        def backward(self, learn): calls.append('mine'); learn.loss.backward()
    Learner(nn.Linear(1, 1), tiny_dls(2, 0), cbs=[MyBackward()]).fit(1, valid=False)
    assert calls == ['mine', 'mine']


def test_train_cb_added_when_missing_and_not_duplicated():
    assert sum(isinstance(c, TrainCB) for c in Learner(nn.Linear(1, 1), tiny_dls()).cbs) == 1
    class MyTrain(TrainCB): pass
    cbs = Learner(nn.Linear(1, 1), tiny_dls(), cbs=[MyTrain()]).cbs
    assert len(cbs) == 1 and isinstance(cbs[0], MyTrain)


def test_one_cycle_schedule_peaks_then_falls():
    dls = synthetic_regression()
    lrs = []
    class LRs(Callback):
        order = 100
        def after_batch(self, learn):
            if learn.training: lrs.append(learn.opt.param_groups[0]['lr'])
    Learner(nn.Linear(1, 1), dls, lr=0.1, cbs=[one_cycle(0.1, 2, len(dls.train)), LRs()]).fit(2)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < 0.01


def test_activation_stats_records_each_training_batch():
    model = nn.Sequential(nn.Linear(1, 4), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(4, 1))
    stats = ActivationStats(lambda m: isinstance(m, GeneralRelu))
    dls = synthetic_regression(256, bs=32)
    Learner(model, dls, lr=0.01, cbs=[stats]).fit(1)
    (h,) = list(stats)
    assert len(h.stats[0]) == len(dls.train)


def test_log_lines_read_naturally():
    "A record prints as `epoch N stage  metrics  (seconds)`, not as its dict's keys and values in a row."
    from ddpm_from_scratch.learner import format_log
    assert format_log({'loss': 0.5, 'epoch': 2, 'train': 'eval', 'time': 0.3}) == 'epoch 2 eval  loss 0.5  (0.3 s)'
    assert format_log({'accuracy': 0.9}) == 'accuracy 0.9'
