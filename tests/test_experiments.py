import importlib.util, json, sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_from_scratch.experiments import BenchModel, SamplerRow, bench_samplers, bench_table, ddpm_quality, load_bench_model, new_results, parse_rows, real_floor, time_row, train_diffusers, write_train_info
from ddpm_from_scratch.timesteps import compare_t_weighting, t_weighting_table
from ddpm_from_scratch.data import format_table
from ddpm_from_scratch.train import TrainConfig, build_model, build_schedule, train_ddpm
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.ddpm import DDPMCB
from ddpm_from_scratch.process import Schedule
from ddpm_from_scratch.learner import Callback
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(channels=(8, 16), epochs=1, bs=32, n_train=64, n_steps=10, schedule='cosine', ema=0.9, lr=2e-3)


def test_parse_rows_grid_and_names():
    rows = parse_rows('grid')
    assert [r.name for r in rows] == ['ddpm', 'ddim25', 'ddim50', 'ddim100', 'ddim200',
                                      'ddim25-eta1', 'ddim50-eta1', 'ddim100-eta1', 'ddim200-eta1']
    assert rows[0] == SamplerRow('ddpm') and rows[-1] == SamplerRow('ddim', (('eta', 1.0), ('steps', 200)))
    assert rows[-1].kwargs == dict(steps=200, eta=1.)   # a row is a registry name and its options
    assert parse_rows(','.join(r.name for r in rows)) == rows  # names read back as the same rows
    assert parse_rows(' DDIM50-eta0.5 , ddim50-eta0.5,ddim50 ') == [SamplerRow.make('ddim', steps=50, eta=.5), SamplerRow.make('ddim', steps=50)]
    assert SamplerRow.make('ddim', steps=50, eta=0.5).name == 'ddim50-eta0.5'
    assert parse_rows('ddim10-eta0') == [SamplerRow.make('ddim', steps=10)] and parse_rows('ddim10-eta0')[0].name == 'ddim10'
    assert parse_rows('ddim')[0].kwargs == {}   # the sampler's default steps


@pytest.mark.parametrize('spec, msg', [('ddim0', 'at least 1 step'), ('ddim10-eta1.5', 'eta must be in'),
                                       ('dim10', 'unknown row'), ('ddim10,ddpm1000', 'unknown row'), (' , ', 'no rows'),
                                       ('ddim10-foo1', "no option 'foo'")])
def test_parse_rows_errors(spec, msg):
    with pytest.raises(ValueError, match=msg): parse_rows(spec)
    with pytest.raises(TypeError, match='string'): parse_rows(['ddpm'])


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp('bench')
    train_ddpm(TrainConfig(**TINY), d / 'scratch', device='cpu', progress=False, n_samples=1, sample_steps=1)
    write_train_info(d / 'scratch', 12.5, 'cpu', cpu_seconds=10.)
    train_diffusers(TrainConfig(**TINY), d / 'diff', dict(channels=(8, 16), attention=False, layers_per_block=1), device='cpu')
    return d


def test_load_both_kinds(ckpts):
    s, d = load_bench_model(ckpts / 'scratch'), load_bench_model(ckpts / 'diff' / 'checkpoint.pt', name='theirs')
    assert s.name == 'scratch' and d.name == 'theirs'
    assert s.info['arch'].startswith('from-scratch UNet') and d.info['arch'].startswith('diffusers UNet2DModel')
    assert type(d.model).__name__ == 'UNet2DModel' and type(s.model).__name__ == 'UNet'
    for bm in (s, d):
        assert bm.info['params'] == sum(p.numel() for p in bm.model.parameters())
        assert bm.schedule.n_steps == 10 and not bm.model.training
        assert bm.info['updates'] == 2 and bm.info['n_train'] == 64 and bm.info['epochs'] == 1
        assert torch.allclose(bm.schedule.alpha_bar, Schedule.cosine(10).alpha_bar)
    assert s.info['train_seconds'] == 12.5 and s.info['train_cpu_seconds'] == 10.
    assert d.info['train_seconds'] > 0 and d.info['train_cpu_seconds'] > 0  # train_diffusers writes its own
    ck = torch.load(ckpts / 'diff' / 'checkpoint.pt', weights_only=True)  # the EMA weights are the ones loaded
    assert torch.equal(d.model.state_dict()['conv_in.weight'], ck['ema']['conv_in.weight'])
    assert not torch.equal(ck['ema']['conv_in.weight'], ck['model']['conv_in.weight'])


def test_load_errors(ckpts, tmp_path):
    ck = torch.load(ckpts / 'diff' / 'checkpoint.pt', weights_only=True)
    bad = dict(ck, unet_kwargs=dict(channels=(16, 32), attention=False, layers_per_block=1))
    torch.save(bad, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match='do not fit fashion_unet'): load_bench_model(tmp_path / 'bad.pt')
    torch.save(dict(ck, arch='transformer'), tmp_path / 'arch.pt')
    with pytest.raises(ValueError, match="unknown arch 'transformer'"): load_bench_model(tmp_path / 'arch.pt')
    with pytest.raises(ValueError, match='exists'):
        train_diffusers(TrainConfig(**TINY), ckpts / 'diff', dict(channels=(8, 16), attention=False))


class CountingNet(nn.Module):
    "Predicts a fixed fraction of x as the noise, and counts its calls."
    def __init__(self):
        super().__init__()
        self.w, self.calls = nn.Parameter(torch.tensor(0.5)), 0
    def forward(self, x, t):
        self.calls += 1
        return self.w * x


def tiny_model(T=10):
    info = dict(arch='counting', params=1, schedule='cosine', n_steps=T, n_train=0, epochs=0, updates=0, bs=1, lr=0., ema=0.)
    return BenchModel('count', CountingNet(), Schedule.cosine(T), info)


def test_time_row_counts_network_calls():
    bm = tiny_model()
    imgs, secs, cpu = time_row(bm, SamplerRow('ddpm'), n=6, bs=4, device='cpu')
    assert imgs.shape == (6, 1, 32, 32) and imgs.abs().max() <= 1 and secs > 0 and cpu > 0
    assert bm.model.calls == 2 * 10  # two batches (4 + 2), every one of the T=10 steps
    bm.model.calls = 0
    time_row(bm, parse_rows('ddim4-eta1')[0], n=6, bs=8, device='cpu')
    assert bm.model.calls == 4
    with pytest.raises(ValueError, match='trained with T=10'): time_row(bm, SamplerRow.make('ddim', steps=11), n=2)


def test_time_row_parts_resume(tmp_path):
    bm, row = tiny_model(), SamplerRow.make('ddim', steps=3, eta=1.)
    assert time_row(bm, row, n=5, bs=2, device='cpu', parts_dir=tmp_path, deadline=0.) is None  # past: nothing starts
    assert bm.model.calls == 0 and not list(tmp_path.iterdir())
    imgs, wall, cpu = time_row(bm, row, n=5, bs=2, device='cpu', parts_dir=tmp_path)
    assert bm.model.calls == 3 * 3 and len(list(tmp_path.glob('*.pt'))) == 3  # 3 batches (2, 2, 1), each kept
    again, wall2, cpu2 = time_row(bm, row, n=5, bs=2, device='cpu', parts_dir=tmp_path)
    assert bm.model.calls == 9 and torch.equal(again, imgs) and (wall2, cpu2) == (wall, cpu)  # all read back
    (tmp_path / sorted(p.name for p in tmp_path.iterdir())[-1]).unlink()  # lose the last batch: only it is redone
    again, _, _ = time_row(bm, row, n=5, bs=2, device='cpu', parts_dir=tmp_path)
    assert bm.model.calls == 12 and torch.equal(again, imgs)
    fresh, _, _ = time_row(tiny_model(), row, n=5, bs=2, device='cpu')  # batch i is seeded with seed + i: reproducible
    assert torch.equal(fresh, imgs) and not torch.equal(fresh[:2], fresh[2:4])


class StubEval:
    "Scores that are simple functions of the images, so the bookkeeping can be checked exactly."
    def __init__(self): self.seen = []
    def scores(self, x):
        self.seen.append(x.clone())
        return dict(fid=float(x.mean()) + 2., kid=float(x.std()), kid_std=0., n=len(x))


def test_bench_samplers_bookkeeping():
    ev, bm = StubEval(), tiny_model()
    res = bench_samplers([bm], 'ddpm,ddim5', ev, n=4, device='cpu', log=None)
    real = fashion_tensors('train')[0][:4]
    assert torch.equal(ev.seen[0], real)  # the floor: the first n training images
    assert res['floor']['fid'] == pytest.approx(float(real.mean()) + 2)
    assert [(r['row'], r['steps'], r['eta']) for r in res['rows']] == [('ddpm', 10, None), ('ddim5', 5, 0.)]
    assert res['rows'][1]['fid'] == pytest.approx(float(ev.seen[2].mean()) + 2)
    json.dumps(res)  # plain numbers and strings only
    res = bench_samplers([bm], 'ddim5,ddim3', ev, n=4, device='cpu', results=res, log=None)
    assert [r['row'] for r in res['rows']] == ['ddpm', 'ddim5', 'ddim3']  # ddim5 replaced, not repeated
    assert len(ev.seen) == 5  # the floor was not recomputed
    with pytest.raises(ValueError, match='equal n'): bench_samplers([bm], 'ddim5', ev, n=8, results=res, log=None)
    res = bench_samplers([bm], 'ddim7', ev, n=4, device='cpu', results=res, log=None, deadline=0.)
    assert res['pending'] == [['count', 'ddim7']] and len(res['rows']) == 3 and 'Not finished yet: count ddim7' in bench_table(res)
    res = bench_samplers([bm], 'ddim7', ev, n=4, device='cpu', results=res, log=None)
    assert res['pending'] == [] and res['rows'][-1]['row'] == 'ddim7'
    with pytest.raises(ValueError, match='at least 2'): bench_samplers([bm], 'ddim5', ev, n=1, log=None)


def test_clip_rows_record_it_and_the_table_shows_it():
    "A row with clip0 samples without clamping, records clip=False, and the table gains a clip column."
    res = bench_samplers([tiny_model()], 'ddim3,ddim3-clip0', StubEval(), n=4, device='cpu', log=None)
    assert [(r['row'], r['clip']) for r in res['rows']] == [('ddim3', True), ('ddim3-clip0', False)]
    assert res['rows'][0]['fid'] != res['rows'][1]['fid']   # clamping changed the images
    head = [l for l in bench_table(res).splitlines() if l.startswith('| model')][0]
    assert '| clip |' in head
    res['rows'] = res['rows'][:1]
    assert '| clip |' not in bench_table(res)   # only shown when some row differs from the default


def test_bench_table_numbers():
    res = new_results(256)
    res['floor'] = dict(fid=4.0, kid=0.001)
    res['models']['m'] = dict(arch='from-scratch UNet', params=1234, schedule='linear', n_steps=1000, n_train=10_000,
                              epochs=3, updates=234, bs=128, lr=3e-3, ema=0.99, train_seconds=120., train_hardware='CPU x',
                              train_cpu_seconds=90., final_loss=0.05)
    res['rows'] = [dict(model='m', row='ddim100', sampler='ddim', steps=100, eta=0., fid=10.0, kid=0.02, kid_std=0.,
                        seconds=64.0, cpu_seconds=32.0, hardware='CPU y')]
    t = bench_table(res)
    cells = lambda t: [c.strip() for c in [l for l in t.splitlines() if l.startswith('| m |')][0].split('|')[1:-1]]
    assert cells(t) == ['m', 'DDIM', '100', '0', '10.0', '2.5x', '0.0200', '64', '32', '125', '256']
    assert 's for 2,048 (CPU, extrapolated)' in t and 'FID 4.0' in t and '1,234 parameters' in t
    assert '2.0 min (1.5 min CPU time) on CPU x' in t and 'Sampling hardware: CPU y.' in t
    assert cells(bench_table(res, clock='wall'))[-2:] == ['250', '512']  # from the wall clock
    res['rows'][0]['hardware'] = 'GPU H100'
    assert 's for 2,048 (wall, extrapolated)' in bench_table(res)  # a GPU row: the wall clock by default
    with pytest.raises(ValueError, match="'cpu' or 'wall'"): bench_table(res, clock='gpu')


def bench_script(name='bench_samplers'):
    "bench/NAME.py (or bench/archive/NAME.py), imported as a module (with bench/ on the path, as when it runs as a script)."
    if str(ROOT / 'bench') not in sys.path: sys.path.append(str(ROOT / 'bench'))
    path = ROOT / 'bench' / f'{name}.py'
    if not path.exists(): path = ROOT / 'bench' / 'archive' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script)
    return script


def test_script_errors_and_table_only(tmp_path, capsys):
    script = bench_script()
    assert script.main(['--rows', 'ddim5']) == 2 and 'at least one --model' in capsys.readouterr().err
    assert script.main(['--model', str(tmp_path / 'nothing')]) == 2 and 'checkpoint not found' in capsys.readouterr().err
    assert script.main(['--model', 'x', '--rows', 'ddim0']) == 2 and 'at least 1 step' in capsys.readouterr().err
    res = new_results(8); res['floor'] = dict(fid=1., kid=0.)
    (tmp_path / 'r.json').write_text(json.dumps(res))
    assert script.main(['--json', str(tmp_path / 'r.json'), '--table-only']) == 0
    assert 'Real-data floor at N=8' in capsys.readouterr().out


def test_script_blocks_scores_each_block_apart(tmp_path, capsys):
    "--blocks K scores the saved batches of a row in K disjoint blocks: real images must beat noise, in that order."
    import argparse
    from ddpm_from_scratch.experiments import part_name
    script = bench_script()
    imgs = torch.cat([fashion_tensors('test')[0][-32:], torch.rand(32, 1, 32, 32) * 2 - 1])  # real, then uniform noise
    parts = tmp_path / 'parts'; parts.mkdir()
    for i in range(8): torch.save(dict(imgs=imgs[8 * i:8 * (i + 1)]), parts / part_name('m', 'ddim5', 8, 0, i, 8))
    res = new_results(64); res['rows'] = [dict(model='m', row='ddim5', fid=1.)]
    a = argparse.Namespace(blocks=2, bs=8, seed=0, device='cpu')
    script.block_fids(res, parts, a)
    line = [l for l in capsys.readouterr().out.splitlines() if 'ddim5' in l][0]
    first, second = map(float, line.split(':')[1].split()[:2])
    assert first < second
    with pytest.raises(ValueError, match='blocks of whole batches'): script.block_fids(res, parts, argparse.Namespace(blocks=3, bs=8, seed=0, device='cpu'))
    (parts / part_name('m', 'ddim5', 8, 0, 7, 8)).unlink()
    with pytest.raises(ValueError, match='missing'): script.block_fids(res, parts, a)


def test_format_table():
    t = format_table([dict(a=1.5, b='x', c=None), dict(a=2., b=3, c=True)], {'a': 'A', 'b': 'B', 'c': 'C'}, dict(a='.2f'))
    assert t.splitlines() == ['| A | B | C |', '|---|---|---|', '| 1.50 | x | - |', '| 2.00 | 3 | True |']
    assert format_table({'r': dict(v=0.5)}, index='name').splitlines()[2] == '| r | 0.5000 |'


class TSpy(Callback):
    "Record the t that DDPMCB drew for every training batch, one list per fit."
    order = DDPMCB.order + 1
    def __init__(self): self.ts = []
    def before_fit(self, learn): self.ts.append([])
    def before_batch(self, learn): self.ts[-1].append(learn.batch[0][1].cpu())


def test_compare_t_weighting_trains_each_weighting():
    "Each run must draw its t from its own weighting (a harness that ignored them would train every run alike)."
    low = torch.zeros(10); low[:3] = 1.
    spy = TSpy()
    res = compare_t_weighting({'uniform': None, 'low': low}, n_train=64, n_valid=32, bs=32, channels=(8, 16), n_steps=10,
                              n_buckets=2, cbs=[spy])
    assert len(spy.ts) == 2
    t_uniform, t_low = torch.cat(spy.ts[0]), torch.cat(spy.ts[1])
    assert len(t_low) == 64 and t_low.max() < 3           # only the favoured steps
    assert t_uniform.max() >= 3                           # P(64 uniform draws all < 3) = 0.3**64
    assert not torch.allclose(res['uniform']['loss_by_t'], res['low']['loss_by_t'])
    t = t_weighting_table(res, n_steps=10)
    assert t.splitlines()[0] == '| t | uniform | low | low/uniform |' and '| mean |' in t


class ScaleNet(nn.Module):
    "A one-parameter noise predictor: trains in a blink."
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
    def forward(self, x, t): return self.w * x


def test_ddpm_quality_floor_is_scored_on_real_images():
    ev = StubEval()
    x_real = fashion_tensors('test')[0][100:104]
    r = ddpm_quality(ScaleNet(), fashion_tensors('train')[0][:64], n_epochs=1, bs=32, n_steps=10, n_samples=4,
                     sample_bs=4, evaluator=ev, x_real=x_real)
    assert len(ev.seen) == 2
    assert torch.equal(ev.seen[0], r['samples']) and r['samples'].shape == (4, 1, 32, 32)
    assert torch.equal(ev.seen[1], x_real)                   # the floor: real images, not the samples
    assert r['floor']['fid'] == pytest.approx(float(x_real.mean()) + 2)
    assert r['scores']['fid'] == pytest.approx(float(r['samples'].mean()) + 2) and r['floor']['fid'] != r['scores']['fid']
    r = ddpm_quality(ScaleNet(), fashion_tensors('train')[0][:64], n_epochs=1, bs=32, n_steps=10, n_samples=4,
                     sample_bs=4, evaluator=StubEval())
    assert r['floor']['fid'] == pytest.approx(float(fashion_tensors('test')[0][:4].mean()) + 2)  # default: the first test images


# ---- harnesses moved here from init, guidance and timesteps ----------------------------------------------------

def test_diverged():
    from ddpm_from_scratch.init import diverged
    assert diverged([1.0, float('nan')]) and diverged([])
    assert diverged([0.2] * 20 + [1.0] * 10)  # blew up and stayed up
    assert not diverged([1.0] * 10 + [0.1] * 10)  # learned
    assert not diverged([0.9] * 20 + [1.0] * 10)  # never learned, but did not blow up either
    noisy = [0.08 + 0.04 * ((-1) ** i) for i in range(40)]  # a healthy run whose batches vary a lot
    assert not diverged(noisy)
    assert diverged([1.0, 0.3, 0.9], n=1)  # the window shrinks for short runs


def test_loss_curve_is_reproducible_and_compare_runs():
    import math
    from ddpm_from_scratch.data import DataLoaders
    from ddpm_from_scratch.init import compare_init, loss_curve
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    dls = DataLoaders.from_tensors((x,), (x[:16],), 16)
    a = loss_curve(True, 1e-5, dls, lr=1e-3)
    assert len(a) == 4 and all(map(math.isfinite, a))
    assert abs(a[0] - 1) < 0.2  # init_ddpm predicts zero noise: the first loss is E[eps^2] ~ 1
    res = compare_init(dls, lr=1e-3, plot=False)
    assert set(res) == {'default init, eps=1e-8', 'init_ddpm, eps=1e-5'}
    assert res['init_ddpm, eps=1e-5'] == a  # same seed, same batches, same noise: reproducible
    assert res['default init, eps=1e-8'] != a and len(res['default init, eps=1e-8']) == 4


def test_guidance_table():
    from ddpm_from_scratch.guidance import guidance_table
    row = dict(acc=0.5, fid=12.345, kid=0.0021, n=40, sample_s=3.)
    txt = guidance_table({'w=1': row, 'real': row})
    assert 'w=1' in txt and 'real' in txt and '12.35' in txt and '2.10' in txt


def test_time_experiment_small():
    from ddpm_from_scratch.timesteps import time_experiment, time_table
    from ddpm_from_scratch.fid import ImageEval
    g = torch.Generator().manual_seed(3)
    images = lambda n, seed: torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(1, 8, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ev = ImageEval(feats, images(64, 3), kid_n=64)
    x = images(64, 4)
    res = time_experiment(x, x[:8], channels=(16, 32), n_epochs=1, bs=16, n_steps=50, record_at=(2, 4), n_buckets=3,
                          n_samples=4, sample_steps=3, evaluator=ev)
    assert set(res) == {'with t', 'without t', 'real'}
    for k in ('with t', 'without t'):
        assert sorted(res[k]['history']) == [0, 2, 4] and res[k]['history'][4].shape == (3,)
        assert res[k]['samples'].shape == (4, 1, 32, 32) and res[k]['scores']['n'] == 4
        assert res[k]['noisy'] in (0., 0.25, 0.5, 0.75, 1.)  # a fraction of 4 samples
    assert res['real']['noisy'] == 1.  # uniform random pixels are all "noisy" by the MAD measure
    assert res['with t']['n_params'] > res['without t']['n_params']  # the time MLP is gone
    txt = time_table(res, 50)
    assert 'without t' in txt and 'FID' in txt and 'real' in txt
    with pytest.raises(ValueError, match='only 4'):
        time_experiment(x, x[:8], channels=(16, 32), bs=16, record_at=(10,), n_samples=0)


def test_parts_do_not_depend_on_n(tmp_path):
    bm, row = tiny_model(), SamplerRow.make('ddim', steps=3, eta=1.)
    big, _, _ = time_row(bm, row, n=6, bs=2, device='cpu', parts_dir=tmp_path)
    calls = bm.model.calls
    small, _, _ = time_row(bm, row, n=4, bs=2, device='cpu', parts_dir=tmp_path)  # the first two batches of the 6-image run
    assert bm.model.calls == calls and torch.equal(small, big[:4])
    odd, _, _ = time_row(bm, row, n=5, bs=2, device='cpu', parts_dir=tmp_path)   # a last batch of 1 is a file of its own
    assert bm.model.calls == calls + 3 and torch.equal(odd[:4], big[:4]) and len(list(tmp_path.glob('*_m1.pt'))) == 1


class CondNet(nn.Module):
    "A class-conditional stand-in: predicts a class-dependent fraction of x; records the classes it was asked for."
    n_classes = 10
    def __init__(self):
        super().__init__()
        self.w, self.seen = nn.Parameter(torch.tensor(0.5)), []
    def forward(self, x, t, c=None):
        c = torch.full((len(x),), 10) if c is None else c
        self.seen.append(c.clone())
        return self.w * x * (1 + c.view(-1, 1, 1, 1) / 20)


def test_guided_rows_ask_for_every_class_and_report_accuracy(monkeypatch):
    import ddpm_from_scratch.experiments as E
    info = dict(tiny_model().info, arch='cond')
    bm = BenchModel('cond', CondNet(), Schedule.cosine(10), info)
    monkeypatch.setattr(E, 'accuracy', lambda clf, x, y: float((y % 2 == 0).float().mean()))  # checks the classes it gets
    monkeypatch.setattr(E, 'load_classifier', lambda: None)
    res = bench_samplers([bm], 'ddim2-w1,ddim2-w3', StubEval(), n=12, bs=8, device='cpu', log=None)
    w1, w3 = res['rows']
    assert (w1['row'], w1['w'], w3['w']) == ('ddim2-w1', 1., 3.) and w1['acc'] == pytest.approx(6 / 12)
    asked = torch.cat(bm.model.seen[:4:2])  # w=1: one network call per step, batch 0 then batch 1 (first step of each)
    assert torch.equal(asked, torch.arange(12) % 10)
    assert 'class acc' in bench_table(res) and '| 0.500 |' in bench_table(res)
    with pytest.raises(ValueError, match='no class conditioning'): bench_samplers([tiny_model()], 'ddim2-w1', StubEval(), n=4, log=None)


def test_claim_part_takes_over_dead_workers(tmp_path):
    import subprocess, sys
    from ddpm_from_scratch.experiments import claim_part
    f = tmp_path / 'b_0.pt'
    assert claim_part(f) and f.with_suffix('.claim').read_text() == str(__import__('os').getpid())
    assert not claim_part(f)  # held by a live process (this one)
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    f.with_suffix('.claim').write_text(str(dead.pid))
    assert claim_part(f)  # its worker is gone: taken over
    c = f.with_suffix('.claim'); c.write_text('')  # created, its id not written yet
    assert not claim_part(f)
    old = c.stat().st_mtime - 120; __import__('os').utime(c, (old, old))
    assert claim_part(f)  # an empty claim a minute old: its worker died before writing its id


def test_two_workers_share_a_row(tmp_path):
    import os, threading
    from ddpm_from_scratch.experiments import part_name
    row = SamplerRow.make('ddim', steps=2, eta=1.)
    want, _, _ = time_row(tiny_model(), row, n=6, bs=2, device='cpu')
    other = tmp_path / part_name('count', row.name, 2, 0, 1, 2)
    other.with_suffix('.claim').write_text(str(os.getppid()))  # batch 1 is being computed by a live process
    bm, out = tiny_model(), {}
    t = threading.Thread(target=lambda: out.update(r=time_row(bm, row, n=6, bs=2, device='cpu', parts_dir=tmp_path, poll=0.05)))
    t.start()
    while not (tmp_path / part_name('count', row.name, 2, 0, 2, 2)).exists(): t.join(0.05)
    assert t.is_alive()  # batches 0 and 2 are done; batch 1 is awaited, not recomputed
    torch.save(dict(imgs=want[2:4], wall=1., cpu=1.), other); other.with_suffix('.claim').unlink()
    t.join(10)
    imgs, wall, cpu = out['r']
    assert torch.equal(imgs, want) and bm.model.calls == 2 * 2 and not list(tmp_path.glob('*.claim'))


def test_plain_diffusers_baseline_plans_decays_and_resumes(tmp_path, monkeypatch, capsys):
    "The baseline loop: diffusers' warm-up + cosine lr, a CPU-time budget, and a resumable state."
    script = bench_script('plain_diffusers')
    f = [script._lr_factor(s, 2000) for s in (0, 250, 500, 1000, 1999, 2000)]
    assert f[0] == 0 and f[1] == pytest.approx(.5) and f[2] == 1 and f[2] > f[3] > f[4] > 0 and f[5] == 0
    x = fashion_tensors('train')[0][:256]
    monkeypatch.setattr(script, 'fashion_tensors', lambda split: (x, None))
    monkeypatch.setattr(script, 'TIMED', 2)
    model, st = script.train(tmp_path, 1e-3, cpu_minutes=0.005)
    assert st['step'] >= 1 and len(st['losses']) == st['step'] and (tmp_path / 'state.pt').exists()
    n0 = st['step']
    model2, st2 = script.train(tmp_path, 1e-3, cpu_minutes=0.03)   # a larger budget: the same run goes on
    assert 'resuming at step' in capsys.readouterr().out
    assert st2['step'] > n0 and len(st2['losses']) == st2['step'] and st2['losses'][:n0] == st['losses']
    assert st2['cpu'] >= 0.03 * 60 or st2['step'] == st2['total']
    _, st3 = script.train(tmp_path / 'fixed', 1e-3, cpu_minutes=0., seed=1, steps=3)  # a step count, not a budget
    assert st3['step'] == st3['total'] == 3 and 'plan_step' not in st3

def test_plain_diffusers_seed_summary():
    "Each group of seeds is summarised once all its runs are in: the plain loop's two samplers, ours' DDIM-50 at N=512."
    script = bench_script('plain_diffusers')
    plain = lambda a, b: dict(diffusers_ddpm1000=dict(fid=a), ours_ddim50=dict(fid=b), ddim50={})
    ours = lambda f: dict(ddim50={512: dict(fid=f), 2048: dict(fid=99.)})
    loop, m2 = script.SEEDS['plain loop, lr 3e-3 (2,721 steps)'], script.SEEDS['main job: M2 (1,998 steps)']
    runs = {n: plain(6. + i, 4. + 2 * i) for i, n in enumerate(loop)}
    runs.update({n: ours(4. + i) for i, n in enumerate(m2[:-1])})
    s = script.seed_summary(runs)
    assert list(s) == ['plain loop, lr 3e-3 (2,721 steps)']  # the main job's last seed is missing: no summary yet
    g, k = s['plain loop, lr 3e-3 (2,721 steps)'], len(loop)
    assert g['ddpm1000'] == [6. + i for i in range(k)] and g['mean_ddpm1000'] == 6. + (k - 1) / 2 and g['mean_ddim50'] == 4. + (k - 1)
    runs[m2[-1]] = ours(4. + len(m2) - 1)
    g = script.seed_summary(runs)['main job: M2 (1,998 steps)']
    assert g['ddpm1000'] == [] and g['mean_ddpm1000'] is None and g['ddim50'] == [4. + i for i in range(len(m2))]
    assert g['mean_ddim50'] == 4. + (len(m2) - 1) / 2


def test_layout_probe_builds_every_layout():
    "Each probed layout builds and predicts noise shaped like x; the D- layouts are diffusers' network with one part changed."
    script = bench_script('layout_probe')
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 700])
    n = {}
    for name in script.LAYOUTS:
        m = script.build(name)
        out = m(x, t)
        assert getattr(out, 'sample', out).shape == x.shape, name
        n[name] = sum(p.numel() for p in m.parameters())
    base = sum(p.numel() for p in script.fashion_unet(**script.DIFFUSERS).parameters())
    assert n['D'] == base and n['D-nomid'] < base < n['D-adagn']  # no middle block: fewer weights; scale and shift: twice the time projection
    assert n['M2-add'] < n['M2'] < n['M2-conv'] < n['M2-cat'] and n['Dense'] == base  # Dense: our UNet, D's layout
    macs = {name: script.conv_macs(script.build(name)) for name in ('S3', 'D', 'D-nomid')}
    assert all(set(m) == {32, 16, 8} for m in macs.values())
    # the middle block is two resnet blocks of two 3x3 convolutions, 64 channels, at 8x8
    assert macs['D'][8] - macs['D-nomid'][8] == 2 * 2 * 64 * 64 * 9 * 8 * 8 and macs['D'][32] == macs['D-nomid'][32]

def test_layout_probe_configs_rebuild_their_layouts():
    "A layout `TrainConfig` can name is stored in the run's config, so `build_model` rebuilds it; other layouts keep the default's."
    script = bench_script('layout_probe')
    cfg = script.train_config('Dense-ours', 10, seed=2)
    a, b = build_model(cfg).state_dict(), script.build('Dense-ours').state_dict()
    assert cfg.seed == 2 and cfg.total_steps == 10 and list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert script.train_config('D-seed1', 10).seed == 1 and script.train_config('M2', 10).seed == 0
    assert script.train_config('S3', 10).channels == (16, 32, 64) and script.train_config('S3', 10).n_res == 3
    assert script.train_config('Dense', 10).channels == TrainConfig().channels  # cond='add' has no TrainConfig field: nothing named


def test_bf16_gap_layers_time_each_layer_in_each_layout():
    "--layers: every layer in every precision and layout, a positive time each, and the table's ratios are computed from them."
    script = bench_script('bench_bf16_gap')
    res = script.layers(bs=2, c=16, size=8, rounds=1, steps=2)
    assert set(res) == set(script.LAYERS) and all(set(d) == set(script.LAYOUTS) for d in res.values())
    assert all(t > 0 for d in res.values() for t in d.values())
    row = [l for l in script.layers_table(res).splitlines() if l.startswith('| GroupNorm')][0]
    d = res['GroupNorm']
    assert row.endswith(f"| {d['fp32 channels-last'] / d['bf16']:.2f}x | {d['fp32 channels-last'] / d['bf16 channels-last']:.2f}x |")


def test_bf16_gap_ops_profiles_both_precisions():
    "--ops: fit_recipe's step profiled in fp32 and bf16; convolutions are found at the input's shape in both."
    script = bench_script('bench_bf16_gap')
    cfg = TrainConfig(channels=(8, 16), n_res=1, bs=8, n_train=64)
    res = script.ops(cfg, steps=2, rounds=1)
    assert set(res) == {'fp32', 'bf16'}
    for q in res: assert res[q][('aten::mkldnn_convolution', (8, 1, 32, 32))] > 0, q
    table = script.ops_table(res, rows=3)
    assert table.startswith(f"all operations: {sum(res['fp32'].values()):.0f} ms per step in fp32") and len(table.splitlines()) == 3 + 3
