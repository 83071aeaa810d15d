"""The sampler contract: every sampler registered in `ddim.SAMPLERS` (the `sampler` fixture in conftest.py) keeps the
shared interface `f(model, x, schedule, *, generator=None, progress=True, callback=None, cond=None, **options)`.
Registering a new sampler is enough to have it checked here (conftest imports `ode`, which registers the sigma samplers)."""
import inspect

import numpy as np
import torch

from ddpm_from_scratch.ddim import sampler_options
from ddpm_from_scratch.ddpm import NoisePredictor
from ddpm_from_scratch.ode import nfe
from ddpm_from_scratch.process import abar_cos, linear_schedule
from ddpm_from_scratch.process import Schedule

COS = Schedule.continuous(abar_cos)  # continuous time: the cosine alpha-bar of t in [0, 1]

SCHED = linear_schedule(n_steps=20)
SHAPE = (2, 1, 16, 16)
KEYS = {'i', 't', 'x', 'x0', 'x_prev'}


class Counting(torch.nn.Module):
    "Wraps a model: counts its calls, records the t it sees and whether it was in eval mode."
    def __init__(self, model): super().__init__(); self.model, self.ts, self.modes = model, [], []
    def forward(self, x, t):
        self.ts.append(t.detach().cpu().clone()); self.modes.append(self.training)
        return self.model(x, t)


def gen(seed): return torch.Generator().manual_seed(seed)


def test_sampler_contract(tiny_unet, sampler, capsys):
    name, f = sampler
    opts = sampler_options(name)
    few = dict(steps=5) if 'steps' in opts else {}  # keep samplers with a step count quick
    run = lambda model, x, schedule=SCHED, **kw: f(model, x, schedule, progress=False, **{**few, **kw})

    # the signature: (model, x, schedule) then the shared keywords; every option has a default
    ps = inspect.signature(f).parameters
    assert list(ps)[:3] == ['model', 'x', 'schedule']
    assert {k: (ps[k].kind, ps[k].default) for k in ('generator', 'progress', 'callback', 'cond')} == {
        'generator': (ps['generator'].KEYWORD_ONLY, None), 'progress': (ps['progress'].KEYWORD_ONLY, True),
        'callback': (ps['callback'].KEYWORD_ONLY, None), 'cond': (ps['cond'].KEYWORD_ONLY, None)}
    assert all(v is not inspect.Parameter.empty for v in opts.values()), opts

    # shapes: from a shape, and from x_T (the same as drawing x_T from the generator first)
    m = tiny_unet(randomise=True)
    out = run(m, SHAPE, generator=gen(0))
    assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()
    g = gen(0); x_T = torch.randn(SHAPE, generator=g)
    torch.testing.assert_close(run(m, x_T, generator=g), out)
    assert run(m, torch.randn(3, 1, 16, 16)).shape == (3, 1, 16, 16)

    # determinism under a seeded generator
    assert torch.equal(run(m, SHAPE, generator=gen(0)), out)
    assert not torch.allclose(run(m, SHAPE, generator=gen(1)), out)

    # eval mode inside, the training flag restored (both cases)
    for training in (True, False):
        cm = Counting(m).train(training)
        run(cm, SHAPE)
        assert cm.training == training and cm.model.training == training and not any(cm.modes)

    # the callback: once per step, in order, with the documented keys, chaining x_prev to the next x; each step's t is
    # one the model was called at; and the model is called as often as `nfe` says (a Heun step costs two calls)
    cm, seen = Counting(m), []
    out = run(cm, SHAPE, generator=gen(2), callback=seen.append)
    assert len(cm.ts) == nfe(name, len(SCHED), **few) and len(seen) >= 1 and [d['i'] for d in seen] == list(range(len(seen)))
    assert all(set(d) == KEYS and d['x'].shape == d['x0'].shape == d['x_prev'].shape == SHAPE for d in seen)
    scale = lambda t: (getattr(m, 't_scale', None) or 1) if t.is_floating_point() else 1  # a fractional step reaches our UNet as t / t_scale
    called = iter([t[0].item() * scale(t) for t in cm.ts])
    assert all(any(abs(d['t'] - c) <= 1e-4 * max(1, abs(c)) for c in called) for d in seen)  # a subsequence of the model's times
    assert all(a['t'] > b['t'] for a, b in zip(seen, seen[1:]))  # time runs backwards
    for a, b in zip(seen, seen[1:]): assert torch.equal(a['x_prev'], b['x'])
    assert torch.equal(seen[-1]['x_prev'], out)

    # the condition: one label per image reaches the model at every call, as `model(x_t, t, cond)`
    class Conditional(torch.nn.Module):
        def __init__(self): super().__init__(); self.seen, self.m = [], m
        def forward(self, x, t, c): self.seen.append(c.tolist()); return self.m(x, t)
    cm = Conditional()
    run(cm, SHAPE, cond=[3, 7])
    assert cm.seen and all(c == [3, 7] for c in cm.seen)
    try: run(cm, SHAPE, cond=[3]); raise AssertionError(f"{name} accepted one label for two images")
    except ValueError: pass

    # device: the model's ('meta' makes a sampler that ignores it fail), also when x_T lives elsewhere
    mm = tiny_unet().to('meta')
    assert run(mm, SHAPE).device.type == 'meta'
    assert run(mm, torch.randn(SHAPE)).device.type == 'meta'

    # continuous time (an alpha-bar function): the model sees float t in [0, 1]; or a clear TypeError
    cm = Counting(m)
    if getattr(f, 'continuous_time', False):
        a = run(cm, SHAPE, COS, generator=gen(0))
        assert a.shape == SHAPE and torch.isfinite(a).all() and torch.equal(a, run(m, SHAPE, COS, generator=gen(0)))
        assert all(t.is_floating_point() and 0 <= t.min() and t.max() <= 1 for t in cm.ts)
    else:
        try: run(cm, SHAPE, COS); raise AssertionError(f"{name} accepted an alpha-bar function without continuous_time")
        except TypeError: assert not cm.ts  # refused before calling the model

    # progress=False prints nothing; progress=True shows a bar
    capsys.readouterr()
    run(m, SHAPE)
    assert capsys.readouterr() == ('', '')
    f(m, SHAPE, SCHED, **few)
    assert capsys.readouterr().err


class AsV(torch.nn.Module):
    """The velocity an eps-model implies, `v = (eps - sqrt(1-abar) x_t) / sqrt(abar)`, with alpha-bar computed here on its
    own (NumPy's interpolation in log sigma for fractional steps), not by the wrapper under test."""
    def __init__(self, eps_model, schedule):
        super().__init__(); self.m, self.ab = eps_model, schedule.alpha_bar.double().numpy()
        self.t_scale = getattr(eps_model, 't_scale', None)
    def forward(self, x, t):
        s = t.double().numpy() * (self.t_scale or 1) if t.is_floating_point() else t.numpy()
        log_sig = np.interp(s, np.arange(len(self.ab)), 0.5 * np.log((1 - self.ab) / self.ab))
        a = torch.from_numpy(1 / (1 + np.exp(2 * log_sig))).view(-1, 1, 1, 1)
        return ((self.m(x, t).double() - (1 - a).sqrt() * x.double()) / a.sqrt()).float()


def test_every_sampler_samples_a_v_network(tiny_unet, sampler):
    "A network trained on v, seen through `NoisePredictor`, samples what the equivalent noise predictor samples."
    name, f = sampler
    few = dict(steps=5) if 'steps' in sampler_options(name) else {}
    m = tiny_unet(randomise=True).eval()
    want = f(m, SHAPE, SCHED, generator=gen(0), progress=False, **few)
    got = f(NoisePredictor(AsV(m, SCHED), SCHED, 'v'), SHAPE, SCHED, generator=gen(0), progress=False, **few)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1., want.abs().max().item()))  # float32 rounding, amplified where samples grow large
