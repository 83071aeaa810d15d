import math, os, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ddpm_from_scratch.data import DataLoaders, set_seed
from ddpm_from_scratch.learner import Callback, Learner, TrainCB, synthetic_regression
from ddpm_from_scratch.mixed import AccelerateCB, FiniteLossCB, MixedPrecision, NonFiniteLossError, autocast_dtype

root = Path(__file__).resolve().parent.parent


def mlp(): return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))


class LossLog(Callback):
    order = 50
    def before_fit(self, learn): self.losses = []
    def after_batch(self, learn):
        if learn.training: self.losses.append(learn.loss.item())


class Snapshot(Callback):
    "Keep a copy of the weights after every optimiser step."
    def after_step(self, learn): self.state = {k: v.clone() for k, v in learn.model.state_dict().items()}


def ordered_dls(x, y, bs=2):
    return DataLoaders(DataLoader(TensorDataset(x, y), bs), DataLoader(TensorDataset(x[:bs], y[:bs]), bs))


def test_autocast_dtype_choice_and_errors():
    assert autocast_dtype('cpu') == torch.bfloat16
    assert autocast_dtype('cuda', 'fp16') == torch.float16
    assert autocast_dtype('cpu', torch.float16) == torch.float16
    assert autocast_dtype('mps') == torch.float16
    with pytest.raises(ValueError, match="dtype must be"): autocast_dtype('cpu', 'fp8')
    with pytest.raises(ValueError, match="dtype must be"): MixedPrecision(torch.float32)
    # the device type is read off the model (data.model_device), never hard-coded: a 'meta' model gives 'meta'
    mp = MixedPrecision()
    mp.before_fit(type('L', (), {'model': nn.Linear(1, 1, device='meta')})())
    assert mp.device_type == 'meta' and mp.dtype == torch.bfloat16 and mp.scaler is None


def test_autocast_active_in_predict_on_cpu_bf16():
    seen = {}
    def hook(m, inp, out): seen['out'] = out.dtype
    class Probe(Callback):
        order = 60
        def after_predict(self, learn): seen['enabled'] = torch.is_autocast_enabled('cpu')
        def after_loss(self, learn): seen['loss'] = learn.loss.dtype
    model = mlp()
    h = model[0].register_forward_hook(hook)
    mp = MixedPrecision()
    Learner(model, synthetic_regression(), lr=0.01, cbs=[mp, Probe()]).fit(1, valid=False)
    h.remove()
    assert mp.device_type == 'cpu' and mp.dtype == torch.bfloat16 and mp.scaler is None
    assert seen == {'out': torch.bfloat16, 'enabled': True, 'loss': torch.float32}
    assert not torch.is_autocast_enabled('cpu')  # left after the loss, not leaked out of fit
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_mixed_precision_trains_and_loss_decreases():
    set_seed(0)
    log = LossLog()
    Learner(mlp(), synthetic_regression(), lr=0.05, cbs=[MixedPrecision(), log]).fit(4, valid=False)
    first, last = sum(log.losses[:3]) / 3, sum(log.losses[-3:]) / 3
    assert last < 0.2 * first, (first, last)


def test_fp16_uses_a_grad_scaler_and_trains():
    set_seed(0)
    log, mp = LossLog(), MixedPrecision('fp16')
    Learner(mlp(), synthetic_regression(), lr=0.05, cbs=[mp, log]).fit(4, valid=False)
    assert isinstance(mp.scaler, torch.amp.GradScaler) and mp.dtype == torch.float16
    assert sum(log.losses[-3:]) < 0.2 * sum(log.losses[:3])


def test_composes_with_a_callback_that_replaces_predict():
    "A DDPM-style TrainCB subclass keeps `predict`; MixedPrecision runs backward and step."
    calls = []
    class TuplePredict(TrainCB):
        order = 1
        def predict(self, learn):
            calls.append(torch.is_autocast_enabled('cpu'))
            learn.preds = learn.model(learn.batch[0])
    class SpyMP(MixedPrecision):
        def backward(self, learn): calls.append('backward'); super().backward(learn)
    learn = Learner(mlp(), synthetic_regression(n=64, bs=32), lr=0.01, cbs=[TuplePredict(), SpyMP()])
    assert learn.stage_cb('predict').__class__ is TuplePredict
    assert learn.stage_cb('backward').__class__ is SpyMP and learn.stage_cb('step').__class__ is SpyMP
    learn.fit(1, valid=False)
    assert calls == [True, 'backward', True, 'backward']


@pytest.mark.parametrize('cb', [FiniteLossCB, MixedPrecision])
def test_nan_loss_stops_with_message_and_keeps_last_good_weights(cb):
    torch.manual_seed(0)
    x = torch.randn(8, 1); y = 3 * x
    x[6] = float('nan')  # batch 3 (of 0..3) is poisoned
    model, snap = mlp(), Snapshot()
    learn = Learner(model, ordered_dls(x, y), lr=0.1, cbs=[cb(), snap])
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 3.*not updated.*lower learning rate.*init_ddpm"):
        learn.fit(2)
    for k, v in model.state_dict().items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, snap.state[k]), k  # unchanged since the step of batch 2
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_nonfinite_gradient_with_finite_loss_is_caught_before_the_step():
    class InfGrad(Callback):
        order = 20
        def after_backward(self, learn):
            if learn.iter == 1: next(learn.model.parameters()).grad[0] = float('inf')
    model, snap = mlp(), Snapshot()
    learn = Learner(model, synthetic_regression(n=128, bs=32), lr=0.1, cbs=[MixedPrecision(), InfGrad(), snap])
    with pytest.raises(NonFiniteLossError, match="A gradient is not finite at epoch 0, batch 1"): learn.fit(1)
    for k, v in model.state_dict().items(): assert torch.equal(v, snap.state[k]), k


def test_validation_nan_does_not_raise():
    "Only training losses are checked: a NaN validation loss cannot reach the weights."
    x = torch.randn(4, 1); y = 3 * x
    xv = torch.full((2, 1), float('nan'))
    dls = DataLoaders(DataLoader(TensorDataset(x, y), 2), DataLoader(TensorDataset(xv, xv), 2))
    Learner(mlp(), dls, lr=0.01, cbs=[MixedPrecision()]).fit(1)


def test_cancelled_batch_leaves_autocast():
    from ddpm_from_scratch.learner import CancelBatchException
    class Cancel(Callback):
        order = 20
        def after_predict(self, learn): raise CancelBatchException()
    Learner(mlp(), synthetic_regression(n=64, bs=32), lr=0.01, cbs=[MixedPrecision(), Cancel()]).fit(1)
    assert not torch.is_autocast_enabled('cpu')


def test_accelerate_cb_single_process_trains():
    set_seed(0)
    log, acb = LossLog(), AccelerateCB(cpu=True)
    learn = Learner(mlp(), synthetic_regression(), lr=0.05, cbs=[acb, log])
    learn.fit(3, valid=False)
    assert acb.acc.num_processes == 1
    assert learn.stage_cb('backward') is acb
    assert sum(log.losses[-3:]) < 0.2 * sum(log.losses[:3])
    learn.fit(1, lr=0.01, valid=False)  # a new optimiser gets prepared too
    assert learn.opt.__class__.__name__ == 'AcceleratedOptimizer'


@pytest.mark.skipif(os.environ.get('DDPM_SKIP_MULTIPROCESS') == '1', reason='DDPM_SKIP_MULTIPROCESS=1')
@pytest.mark.slow
def test_accelerate_two_cpu_processes():
    """MULTI-PROCESS, ~20-30 s: launches bench/accelerate_two_cpu.py, which trains with AccelerateCB in two CPU
    processes (gloo) and checks both ranks ran on different batches, the loss fell, and the model copies agree."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    proc = subprocess.run([sys.executable, str(root / 'bench' / 'accelerate_two_cpu.py'), '--n_train', '512'],
                          capture_output=True, text=True, timeout=240, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'rank 0/2' in proc.stdout and 'rank 1/2' in proc.stdout and 'all checks passed' in proc.stdout


def test_with_ddpmcb_and_a_unet(tiny_unet):
    "The real composition: DDPMCB runs predict (model(x_t, t)), MixedPrecision autocasts it and steps."
    from ddpm_from_scratch.ddpm import DDPMCB
    from ddpm_from_scratch.ddpm import adam_opt
    set_seed(0)
    model = tiny_unet()   # zero-initialised output: predicts zero noise at first
    seen = []
    h = model.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(32, 1, 32, 32) * 2 - 1
    log, ddpm, mp = LossLog(), DDPMCB(), MixedPrecision()
    learn = Learner(model, DataLoaders.from_tensors((x,), (x[:8],), 8), F.mse_loss, lr=1e-3,
                    cbs=[ddpm, mp, log], opt_func=adam_opt())
    assert learn.stage_cb('predict') is ddpm and learn.stage_cb('backward') is mp and learn.stage_cb('step') is mp
    learn.fit(1, valid=False)
    h.remove()
    assert seen == [torch.bfloat16] * 4 and len(log.losses) == 4 and all(map(math.isfinite, log.losses))
    assert abs(log.losses[0] - 1) < 0.3  # zero output at init: the first loss is E[eps^2]
    assert model.conv_out.weight.abs().max() > 0  # it stepped
