import inspect, math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_from_scratch.unet import ResBlock, SelfAttention, UNet, timestep_embedding

SMALL = dict(channels=(16, 32, 32), n_res=1, attn_res=(8,))  # fast, with attention at 8x8


def perturb(m, std=0.05, seed=0):
    "Move every parameter away from its (partly zero) init so that every input can reach the output."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn(p.shape, generator=g) * std)
    return m


def xt(b=3, c=1, s=32, seed=0): return torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(seed))


# ---- timestep embedding ------------------------------------------------------------------------------------

def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 7, 999])
    e = timestep_embedding(t, 8, max_period=10000)
    assert e.shape == (3, 8)
    w = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expect = torch.cat([torch.sin(t[:, None] * w), torch.cos(t[:, None] * w)], 1)
    torch.testing.assert_close(e, expect, atol=1e-5, rtol=1e-5)
    assert timestep_embedding(5, 7).shape == (1, 7) and (timestep_embedding(5, 7)[:, -1] == 0).all()
    with pytest.raises(ValueError, match='dim'): timestep_embedding(t, 1)
    with pytest.raises(ValueError, match='1-d'): timestep_embedding(torch.zeros(2, 2), 8)


# ---- shapes and init ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('kw', [dict(), dict(skip='cat'), dict(down='conv', cond='add'), dict(n_res=1, attn_res=(8, 4)),
                                dict(skip='dense', mid=2), dict(skip='dense', n_res=1, attn_res=(8, 4)), dict(skip='cat', mid=1),
                                dict(in_channels=3, out_channels=2, channels=(16, 32), img_size=16, attn_res=(16,))])
def test_output_shape_and_zero_init(kw):
    m = UNet(**kw)
    x = xt(2, kw.get('in_channels', 1), kw.get('img_size', 32))
    out = m(x, torch.randint(0, 1000, (2,)))
    assert isinstance(out, torch.Tensor) and not hasattr(out, 'sample')
    assert out.shape == (2, kw.get('out_channels', 1), *x.shape[-2:])
    assert (out == 0).all()  # the output convolution starts at zero
    for mod in m.modules():  # ... and so does every residual branch
        if isinstance(mod, ResBlock): assert (mod.conv2.weight == 0).all() and (mod.conv2.bias == 0).all()
        if isinstance(mod, SelfAttention): assert (mod.proj.weight == 0).all()


def test_resblock_starts_as_scaled_identity():
    for cond in ('add', 'adagn'):
        b = ResBlock(16, 16, emb_dim=32, cond=cond)
        x = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(b(x, torch.randn(2, 32)), x / math.sqrt(2))
        assert torch.equal(ResBlock(16, 16, skip_scale=False)(x), x)


def _attention_reference(att, x):
    "Self-attention written out: per head, softmax over the H*W pixel positions of q.k/sqrt(d), then a weighted sum of v."
    b, c, hh, ww = x.shape
    n, heads = hh * ww, att.heads
    d = c // heads
    q, k, v = att.qkv(att.norm(x)).reshape(b, 3 * c, n).chunk(3, dim=1)        # each (b, c, n)
    q, k, v = (z.reshape(b, heads, d, n) for z in (q, k, v))                      # channels split into heads
    w = torch.einsum('bhdi,bhdj->bhij', q, k) / math.sqrt(d)                      # (b, heads, n, n): position i looks at j
    out = torch.einsum('bhij,bhdj->bhdi', w.softmax(dim=-1), v).reshape(b, c, hh, ww)
    return (x + att.proj(out)) * att.scale


@pytest.mark.parametrize('ni, head_dim', [(64, 32), (16, 32)])   # two heads; one head (16 is not a multiple of 32)
def test_self_attention_attends_over_pixel_positions(ni, head_dim):
    "With the zero-initialised output projection randomised, the layer must equal attention over the H*W positions."
    torch.manual_seed(0)
    att = perturb(SelfAttention(ni, groups=8, head_dim=head_dim), std=0.3).eval()
    assert att.proj.weight.abs().min() > 0                                         # the branch is live, not zero
    x = torch.randn(2, ni, 4, 6)                                                   # H != W catches a transposed grid
    with torch.no_grad(): out, ref = att(x), _attention_reference(att, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert (out - x * att.scale).abs().max() > 0.1                                 # and the attention branch matters
    # one pixel's change reaches every other position (convolutions here are 1x1: only attention mixes positions)
    x2 = x.clone(); x2[:, :, 0, 0] += 3
    with torch.no_grad(): diff = (att(x2) - out).abs().amax(dim=1)
    assert (diff[:, 1:, :] > 0).all() and (diff[:, :, 1:] > 0).all()


def test_output_other_resolution_and_bad_input():
    m = perturb(UNet(**SMALL))
    assert m(xt(2, s=16), 5).shape == (2, 1, 16, 16)  # any multiple of 2**(levels-1)
    with pytest.raises(ValueError, match=r'multiples of 4'): m(xt(2, s=30), 5)
    with pytest.raises(ValueError, match=r'\(B, 1, H, W\)'): m(xt(2, c=3), 5)


# ---- configuration errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize('kw, msg', [
    (dict(channels=(32, 64, 100), groups=8), r'\[100\] is not divisible by groups=8'),
    (dict(channels=(32, 64, 96), groups=5), r'divisible by groups=5'),
    (dict(groups=32), r'single channel per group at width 32.*use groups in \[2, 4, 8, 16\]'),
    (dict(channels=(8, 16), groups=8), r'single channel per group at width 8'),
    (dict(channels=(3, 5), attn_res=()), r'No GroupNorm setting works'),
    (dict(groups=0), r'groups must be a positive int'),
    (dict(img_size=30), r'img_size=30 must be a positive multiple of 2\*\*\(levels-1\)=8.*e\.g\. 32'),
    (dict(img_size=12), r'multiple of 8 \(e\.g\. 16\)'),
    (dict(attn_res=(10,)), r'resolution \[10\].*valid resolutions are \(32, 16, 8, 4\)'),
    (dict(attn_res=(2,), channels=(32, 64)), r'valid resolutions are \(32, 16\)'),
    (dict(cond='film'), r"cond must be 'add' or 'adagn'"),
    (dict(down='max'), r"down must be 'avg' or 'conv'"),
    (dict(skip='mul'), r"skip must be 'add', 'cat' or 'dense'"),
    (dict(mid=-1), r'mid must be an int >= 0'),
    (dict(n_res=0), r'n_res must be an int >= 1'),
    (dict(dropout=1.5), r'dropout must be in \[0, 1\)'),
    (dict(n_classes=0), r'n_classes must be None or a positive int'),
    (dict(t_scale=0), r't_scale must be None or > 0'),
])
def test_bad_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): UNet(**kw)


def test_default_groups_follow_the_one_rule():
    "Without `groups`, the U-Net takes `default_groups(channels)`: 8 where every width allows it, else the largest that works."
    from ddpm_from_scratch.unet import default_groups
    for ch in ((32, 64, 128, 128), (8, 16), (16, 32, 64, 100)):
        assert UNet(channels=ch, attn_res=()).config['groups'] == default_groups(ch)
    assert default_groups((8, 16)) == 4 and default_groups((32, 64)) == 8


def test_img_size_28_fine_with_three_levels():
    m = UNet(img_size=28, channels=(32, 64, 64), attn_res=(7,))
    assert m(xt(1, s=28), 3).shape == (1, 1, 28, 28)


# ---- time ----------------------------------------------------------------------------------------------------

def test_t_int_and_float():
    m = perturb(UNet(**SMALL)).eval()
    x = xt()
    steps = torch.tensor([0, 250, 999])
    out_int = m(x, steps)
    torch.testing.assert_close(m(x, steps.float() / 1000), out_int, atol=1e-5, rtol=1e-4)  # continuous t * 1000
    assert not torch.allclose(m(x, steps.flip(0)), out_int, atol=1e-4)  # t matters
    torch.testing.assert_close(m(x, 250), m(x, torch.full((3,), 250)))  # python int broadcasts
    torch.testing.assert_close(m(x, torch.tensor(0.25)), m(x, torch.full((3,), 250)), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r'continuous time in \[0, 1\].*t_scale=None'): m(x, steps.float())
    with pytest.raises(ValueError, match=r'shape \(3,\)'): m(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match='t is required'): m(x, None)
    m2 = UNet(**SMALL, t_scale=None); m2.load_state_dict(m.state_dict()); m2.eval()
    torch.testing.assert_close(m2(x, steps.float()), out_int)  # t_scale=None: floats are used as given


def test_time_cond_false_ignores_t():
    m = perturb(UNet(**SMALL, time_cond=False)).eval()
    assert not hasattr(m, 'time_mlp')
    x = xt()
    a = m(x, torch.tensor([0, 1, 2]))
    assert torch.equal(a, m(x, torch.tensor([999, 500, 3]))) and torch.equal(a, m(x, None))
    assert a.abs().max() > 0


# ---- classes ---------------------------------------------------------------------------------------------------

def test_class_conditioning_only_with_n_classes():
    x, t = xt(), torch.tensor([10, 500, 900])
    m = perturb(UNet(**SMALL, n_classes=10)).eval()
    a, b = m(x, t, torch.tensor([0, 1, 2])), m(x, t, torch.tensor([3, 4, 5]))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every image changes with its class
    torch.testing.assert_close(m(x, t), m(x, t, torch.full((3,), 10)))  # c=None is the "no class" index
    assert not torch.allclose(m(x, t), a, atol=1e-4)
    with pytest.raises(ValueError, match=r'in \[0, 10\]'): m(x, t, torch.tensor([0, 1, 11]))
    with pytest.raises(ValueError, match=r'in \[0, 10\]'): m(x, t, torch.tensor([0., 1., 2.]))
    # class-only conditioning also works without time
    mc = perturb(UNet(**SMALL, n_classes=3, time_cond=False)).eval()
    assert not torch.allclose(mc(x, t, torch.tensor([0, 0, 0])), mc(x, t, torch.tensor([1, 1, 1])), atol=1e-4)

    u = perturb(UNet(**SMALL)).eval()  # no n_classes: no class embedding, and c is refused rather than ignored
    assert not any('class' in n for n, _ in u.named_parameters())
    with pytest.raises(ValueError, match='n_classes'): u(x, t, torch.tensor([0, 1, 2]))


# ---- training ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kw', [dict(attn_res=(16, 8)), dict(skip='cat', down='conv', cond='add', n_classes=4),
                                dict(skip='dense', mid=2, attn_res=(8,))])
def test_gradient_reaches_every_parameter(kw):
    torch.manual_seed(0)
    m = UNet(channels=(16, 32, 32), n_res=1, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, eps = xt(4), xt(4, seed=1)
    c = torch.arange(4) if kw.get('n_classes') else None
    for step in range(3):  # zero inits open up one layer per step: conv_out, then conv2/proj, then the rest
        opt.zero_grad()
        F.mse_loss(m(x, torch.tensor([1, 300, 600, 999]), c), eps).backward()
        if step == 0:  # at init only the output convolution gets a gradient
            assert m.conv_out.weight.grad.abs().sum() > 0 and m.conv_in.weight.grad.abs().sum() == 0
        opt.step()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == [], dead
    if kw.get('n_classes'):
        g = m.class_emb.weight.grad  # only the rows of the classes seen; row 4 ("no class") was never used
        assert (g[:4].abs().sum(1) > 0).all() and (g[4] == 0).all()


def test_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    m = UNet(**SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x0 = torch.randn(8, 1, 32, 32).clamp(-1, 1)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    t = torch.randint(0, 1000, (8,)); eps = torch.randn_like(x0)
    a = abar[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    losses = []
    for _ in range(15):
        loss = F.mse_loss(m(x_t, t), eps); opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert abs(losses[0] - eps.pow(2).mean().item()) < 1e-6  # zero output at init
    assert losses[-1] < 0.5 * losses[0], losses


def test_eval_is_deterministic_train_dropout_is_not():
    m = perturb(UNet(**SMALL, dropout=0.3))
    x, t = xt(), torch.tensor([3, 30, 300])
    m.eval()
    with torch.no_grad(): a, b = m(x, t), m(x, t)
    assert torch.equal(a, b)
    m.train()
    with torch.no_grad(): c, d = m(x, t), m(x, t)
    assert not torch.equal(c, d)


# ---- config and drop-in ------------------------------------------------------------------------------------------

def test_config_rebuilds_the_model():
    m = UNet(**SMALL, n_classes=5, cond='add')
    params = list(inspect.signature(UNet).parameters)
    assert list(m.config) == params
    assert m.config['channels'] == (16, 32, 32) and m.config['n_classes'] == 5 and m.config['cond'] == 'add'
    m2 = UNet(**m.config)
    m2.load_state_dict(perturb(m).state_dict())  # same architecture: the state dict fits exactly
    x = xt()
    torch.testing.assert_close(m2.eval()(x, 7), m.eval()(x, 7))


def test_drops_into_the_ddpm_code(tiny_unet):
    from ddpm_from_scratch.process import linear_schedule, predict_noise
    from ddpm_from_scratch.sampling import sample_ddpm
    m = tiny_unet(randomise=True)
    x = xt(2, s=16)
    out = predict_noise(m, x, torch.tensor([5, 6]))
    assert torch.equal(out, m(x, torch.tensor([5, 6])))
    imgs = sample_ddpm(m, (2, 1, 16, 16), linear_schedule(n_steps=5), progress=False,
                       generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 1, 16, 16) and torch.isfinite(imgs).all() and m.training  # mode restored


@pytest.mark.parametrize('channels,n_res', [((16, 32, 64), 1), ((32, 64), 2)])
def test_dense_layout_has_the_weights_of_unet2dmodel(channels, n_res):
    "Built with diffusers' choices, the dense layout has UNet2DModel's weights, tensor for tensor (by shape)."
    from ddpm_from_scratch.unet import fashion_unet
    ours = UNet(channels=channels, n_res=n_res, attn_res=(), cond='add', skip_scale=False, down='conv', skip='dense', mid=2)
    theirs = fashion_unet(channels, attention=False, layers_per_block=n_res)
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())
    assert shapes(ours) == shapes(theirs)
