import importlib.util, json
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_from_scratch.bench import (BenchModel, SamplerRow, bench_samplers, format_table, load_bench_model,
                                     new_results, parse_rows, real_floor, time_row, train_diffusers, write_train_info)
from ddpm_from_scratch.cli import TrainConfig, UserError, atomic_write, make_schedule, train_ddpm
from ddpm_from_scratch.data import fashion_tensors

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(channels=(8, 16), epochs=1, bs=32, n_train=64, n_steps=10, schedule='cosine', ema=0.9, lr=2e-3)


def test_parse_rows_grid_and_names():
    rows = parse_rows('grid')
    assert [r.name for r in rows] == ['ddpm', 'ddim25', 'ddim50', 'ddim100', 'ddim200',
                                      'ddim25-eta1', 'ddim50-eta1', 'ddim100-eta1', 'ddim200-eta1']
    assert rows[0] == SamplerRow('ddpm', 0, None) and rows[-1] == SamplerRow('ddim', 200, 1.0)
    assert parse_rows(','.join(r.name for r in rows)) == rows  # names read back as the same rows
    assert parse_rows(' DDIM50-eta0.5 , ddim50-eta0.5,ddim50 ') == [SamplerRow('ddim', 50, 0.5), SamplerRow('ddim', 50, 0.)]
    assert SamplerRow('ddim', 50, 0.5).name == 'ddim50-eta0.5'
    assert parse_rows('ddim10-eta0') == [SamplerRow('ddim', 10, 0.)] and parse_rows('ddim10-eta0')[0].name == 'ddim10'


@pytest.mark.parametrize('spec, msg', [('ddim0', 'at least 1 step'), ('ddim10-eta1.5', 'eta must be in'),
                                       ('dim10', 'unknown row'), ('ddim10,ddpm1000', 'unknown row'), (' , ', 'no rows')])
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
        assert torch.allclose(bm.schedule.alpha_bar, make_schedule('cosine', 10).alpha_bar)
    assert s.info['train_seconds'] == 12.5 and s.info['train_cpu_seconds'] == 10.
    assert d.info['train_seconds'] > 0 and d.info['train_cpu_seconds'] > 0  # train_diffusers writes its own
    ck = torch.load(ckpts / 'diff' / 'checkpoint.pt', weights_only=True)  # the EMA weights are the ones loaded
    assert torch.equal(d.model.state_dict()['conv_in.weight'], ck['ema']['conv_in.weight'])
    assert not torch.equal(ck['ema']['conv_in.weight'], ck['model']['conv_in.weight'])


def test_load_errors(ckpts, tmp_path):
    ck = torch.load(ckpts / 'diff' / 'checkpoint.pt', weights_only=True)
    bad = dict(ck, unet_kwargs=dict(channels=(16, 32), attention=False, layers_per_block=1))
    torch.save(bad, tmp_path / 'bad.pt')
    with pytest.raises(UserError, match='do not fit fashion_unet'): load_bench_model(tmp_path / 'bad.pt')
    torch.save(dict(ck, arch='transformer'), tmp_path / 'arch.pt')
    with pytest.raises(UserError, match="unknown arch 'transformer'"): load_bench_model(tmp_path / 'arch.pt')
    with pytest.raises(UserError, match='exists'):
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
    return BenchModel('count', CountingNet(), make_schedule('cosine', T), info)


def test_time_row_counts_network_calls():
    bm = tiny_model()
    imgs, secs, cpu = time_row(bm, SamplerRow('ddpm', 0), n=6, bs=4, device='cpu')
    assert imgs.shape == (6, 1, 32, 32) and imgs.abs().max() <= 1 and secs > 0 and cpu > 0
    assert bm.model.calls == 2 * 10  # two batches (4 + 2), every one of the T=10 steps
    bm.model.calls = 0
    time_row(bm, parse_rows('ddim4-eta1')[0], n=6, bs=8, device='cpu')
    assert bm.model.calls == 4
    with pytest.raises(ValueError, match='trained with T=10'): time_row(bm, SamplerRow('ddim', 11, 0.), n=2)


def test_time_row_parts_resume(tmp_path):
    bm, row = tiny_model(), SamplerRow('ddim', 3, 1.)
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
    assert res['pending'] == [['count', 'ddim7']] and len(res['rows']) == 3 and 'Not finished yet: count ddim7' in format_table(res)
    res = bench_samplers([bm], 'ddim7', ev, n=4, device='cpu', results=res, log=None)
    assert res['pending'] == [] and res['rows'][-1]['row'] == 'ddim7'
    with pytest.raises(ValueError, match='at least 2'): bench_samplers([bm], 'ddim5', ev, n=1, log=None)


def test_format_table_numbers():
    res = new_results(256)
    res['floor'] = dict(fid=4.0, kid=0.001)
    res['models']['m'] = dict(arch='from-scratch UNet', params=1234, schedule='linear', n_steps=1000, n_train=10_000,
                              epochs=3, updates=234, bs=128, lr=3e-3, ema=0.99, train_seconds=120., train_hardware='CPU x',
                              train_cpu_seconds=90., final_loss=0.05)
    res['rows'] = [dict(model='m', row='ddim100', sampler='ddim', steps=100, eta=0., fid=10.0, kid=0.02, kid_std=0.,
                        seconds=64.0, cpu_seconds=32.0, hardware='CPU y')]
    t = format_table(res)
    cells = lambda t: [c.strip() for c in [l for l in t.splitlines() if l.startswith('| m |')][0].split('|')[1:-1]]
    assert cells(t) == ['m', 'DDIM', '100', '0', '10.0', '2.5x', '0.0200', '64', '32', '125', '256']
    assert 's for 2,048 (CPU, extrapolated)' in t and 'FID 4.0' in t and '1,234 parameters' in t
    assert '2.0 min (1.5 min CPU time) on CPU x' in t and 'Sampling hardware: CPU y.' in t
    assert cells(format_table(res, clock='wall'))[-2:] == ['250', '512']  # from the wall clock
    res['rows'][0]['hardware'] = 'GPU H100'
    assert 's for 2,048 (wall, extrapolated)' in format_table(res)  # a GPU row: the wall clock by default
    with pytest.raises(ValueError, match="'cpu' or 'wall'"): format_table(res, clock='gpu')


def test_script_errors_and_table_only(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('bench_samplers', ROOT / 'bench' / 'bench_samplers.py')
    script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script)
    assert script.main(['--rows', 'ddim5']) == 2 and 'at least one --model' in capsys.readouterr().err
    assert script.main(['--model', str(tmp_path / 'nothing')]) == 2 and 'checkpoint not found' in capsys.readouterr().err
    assert script.main(['--model', 'x', '--rows', 'ddim0']) == 2 and 'at least 1 step' in capsys.readouterr().err
    res = new_results(8); res['floor'] = dict(fid=1., kid=0.)
    (tmp_path / 'r.json').write_text(json.dumps(res))
    assert script.main(['--json', str(tmp_path / 'r.json'), '--table-only']) == 0
    assert 'Real-data floor at N=8' in capsys.readouterr().out
