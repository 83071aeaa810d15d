"Tests of the DDPM initialisation (zeroed residual branches and output, orthogonal downsamplers) and Adam's larger eps."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from ddpm_from_scratch.data import set_seed
from ddpm_from_scratch.unet import fashion_unet
from ddpm_from_scratch.process import linear_schedule, noisify
from ddpm_from_scratch.init import adam_opt, init_ddpm
from ddpm_from_scratch import ddpm, init


def unet(): return fashion_unet((16, 32, 32, 64), layers_per_block=1)


def small(): return fashion_unet((8, 16, 32), attention=False, layers_per_block=1)


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
    model = init_ddpm(small())
    x, t = torch.randn(2, 1, 32, 32), torch.randint(0, 1000, (2,))
    out = model(x, t).sample
    assert out.shape == (2, 1, 32, 32) and out.abs().max() == 0
    (out - torch.randn_like(out)).pow(2).mean().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0  # the zeroed layer learns


def test_initialised_unet_starts_at_the_loss_of_predicting_zero():
    "The first DDPM loss after init_ddpm is E[eps^2] ~ 1, exactly the zero predictor's; the default init's is not."
    x0 = torch.rand(32, 1, 32, 32) * 2 - 1
    (x_t, t), eps = noisify(x0, linear_schedule(), generator=torch.Generator().manual_seed(0))
    set_seed(0)
    model = init_ddpm(small())
    with torch.no_grad():
        loss = F.mse_loss(model(x_t, t).sample, eps)
        assert torch.equal(loss, eps.pow(2).mean()) and abs(loss.item() - 1) < 0.05
        set_seed(0)
        assert not torch.equal(F.mse_loss(small()(x_t, t).sample, eps), loss)  # the control: default init


def test_init_ddpm_rejects_other_models():
    with pytest.raises(TypeError, match="UNet2DModel"): init_ddpm(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_adam_opt():
    opt = adam_opt()(nn.Linear(2, 2).parameters(), lr=1e-2)
    assert isinstance(opt, optim.Adam) and opt.defaults['eps'] == 1e-5 and opt.defaults['lr'] == 1e-2
    assert adam_opt(1e-3, betas=(0.9, 0.99))(nn.Linear(2, 2).parameters(), lr=1).defaults['betas'] == (0.9, 0.99)
    with pytest.raises(ValueError, match="eps must be positive"): adam_opt(0)


def test_adam_opt_is_defined_once():
    "init re-exports ddpm's adam_opt (fit_ddpm's default optimiser): one definition in the package."
    assert init.adam_opt is ddpm.adam_opt and 'adam_opt' in init.__all__


def test_eps_sets_the_step_for_tiny_gradients():
    "Adam's first step is lr * g / (|g| + eps): a closed form."
    for g, eps in [(1e-7, 1e-8), (1e-7, 1e-5), (1e-3, 1e-5)]:
        w = torch.zeros(1, requires_grad=True)
        opt = adam_opt(eps)([w], lr=1e-2)
        w.grad = torch.full((1,), g); opt.step()
        assert math.isclose(-w.item(), 1e-2 * g / (g + eps), rel_tol=1e-3)
