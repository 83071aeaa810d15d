import math

import pytest
import torch
from torch import nn, optim

from ddpm_from_scratch.data import DataLoaders, set_seed
from ddpm_from_scratch.ddpm import fashion_unet
from ddpm_from_scratch.init import adam_opt, compare_init, diverged, init_ddpm, loss_curve, small_unet


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "One thread: on a busy 2-core machine two threads per process can be ten times slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def unet(): return fashion_unet((16, 32, 32, 64), layers_per_block=1)


def split(model):
    "Names of parameters that init_ddpm must zero, orthogonalise, or leave alone."
    zero, orth = set(), set()
    for n, m in model.named_modules():
        if type(m).__name__ == 'ResnetBlock2D': zero |= {f'{n}.conv2.weight', f'{n}.conv2.bias'}
        if n.endswith('downsamplers.0.conv'): orth.add(f'{n}.weight')
    zero |= {'conv_out.weight', 'conv_out.bias'}
    return zero, orth


def test_init_ddpm_zeroes_orthogonalises_and_leaves_the_rest():
    set_seed(0)
    model = unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_ddpm(model) is model
    zero, orth = split(model)
    n_res = sum(type(m).__name__ == 'ResnetBlock2D' for m in model.modules())
    assert len(zero) == 2 * n_res + 2 and n_res == 4 + 2 + 4 * 2  # down, mid, up (layers_per_block + 1 per up block)
    assert len(orth) == 3  # all levels but the last downsample
    after = model.state_dict()
    for k in zero: assert after[k].abs().max() == 0, k
    for k in orth:
        W = after[k].flatten(1)
        assert W.shape[0] <= W.shape[1]
        assert torch.allclose(W @ W.T, torch.eye(len(W)), atol=1e-5), k
        assert not torch.equal(after[k], before[k])
    untouched = set(after) - zero - orth
    assert len(untouched) > 50
    for k in untouched: assert torch.equal(after[k], before[k]), k


def test_default_downsampler_is_not_orthogonal():
    "The orthogonality check can fail: PyTorch's default init does not pass it."
    model = unet()
    W = model.down_blocks[0].downsamplers[0].conv.weight.flatten(1)
    assert not torch.allclose(W @ W.T, torch.eye(len(W)), atol=1e-2)


def test_initialised_unet_predicts_zero_and_still_gets_gradients():
    set_seed(0)
    model = init_ddpm(small_unet())
    x, t = torch.randn(2, 1, 32, 32), torch.randint(0, 1000, (2,))
    out = model(x, t).sample
    assert out.shape == (2, 1, 32, 32) and out.abs().max() == 0
    (out - torch.randn_like(out)).pow(2).mean().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0  # the zeroed layer learns


def test_init_ddpm_rejects_other_models():
    with pytest.raises(TypeError, match="UNet2DModel"): init_ddpm(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_adam_opt():
    opt = adam_opt()(nn.Linear(2, 2).parameters(), lr=1e-2)
    assert isinstance(opt, optim.Adam) and opt.defaults['eps'] == 1e-5 and opt.defaults['lr'] == 1e-2
    assert adam_opt(1e-3, betas=(0.9, 0.99))(nn.Linear(2, 2).parameters(), lr=1).defaults['betas'] == (0.9, 0.99)
    with pytest.raises(ValueError, match="eps must be positive"): adam_opt(0)


def test_eps_sets_the_step_for_tiny_gradients():
    "Adam's first step is lr * g / (|g| + eps): a closed form."
    for g, eps in [(1e-7, 1e-8), (1e-7, 1e-5), (1e-3, 1e-5)]:
        w = torch.zeros(1, requires_grad=True)
        opt = adam_opt(eps)([w], lr=1e-2)
        w.grad = torch.full((1,), g); opt.step()
        assert math.isclose(-w.item(), 1e-2 * g / (g + eps), rel_tol=1e-3)


def test_diverged():
    assert diverged([1.0, float('nan')]) and diverged([])
    assert diverged([0.2] * 20 + [1.0] * 10)  # blew up and stayed up
    assert not diverged([1.0] * 10 + [0.1] * 10)  # learned
    assert not diverged([0.9] * 20 + [1.0] * 10)  # never learned, but did not blow up either
    noisy = [0.08 + 0.04 * ((-1) ** i) for i in range(40)]  # a healthy run whose batches vary a lot
    assert not diverged(noisy)
    assert diverged([1.0, 0.3, 0.9], n=1)  # the window shrinks for short runs


def test_loss_curve_is_reproducible_and_compare_runs():
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    dls = DataLoaders.from_tensors((x,), (x[:16],), 16)
    a = loss_curve(True, 1e-5, dls, lr=1e-3)
    assert len(a) == 4 and all(map(math.isfinite, a))
    assert abs(a[0] - 1) < 0.2  # init_ddpm predicts zero noise: the first loss is E[eps^2] ~ 1
    res = compare_init(dls, lr=1e-3, plot=False)
    assert set(res) == {'default init, eps=1e-8', 'init_ddpm, eps=1e-5'}
    assert res['init_ddpm, eps=1e-5'] == a  # same seed, same batches, same noise: reproducible
    assert res['default init, eps=1e-8'] != a and len(res['default init, eps=1e-8']) == 4
