"End-to-end tests of the console scripts `ddpm_train`, `ddpm_sample` and `ddpm_eval` on tiny configurations."
import os, shutil, signal, stat, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from ddpm_from_scratch.cli import (EMACB, TrainConfig, UserError, WarmupEMA, build_model, build_schedule, load_checkpoint,
                                   model_from_checkpoint, warmup_cosine)
from ddpm_from_scratch.ddpm import Schedule

TINY = ['--channels', '8,16', '--bs', '64', '--n_train', '256', '--n_steps', '50', '--samples', '4', '--quiet']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'DDPM_DEVICE': 'cpu', 'MPLBACKEND': 'Agg'}


def cmd(name):
    exe = shutil.which(name)
    assert exe, f"console script {name} is not installed: run `pip install -e .`"
    return exe


def run(name, *args, cwd, timeout=300):
    return subprocess.run([cmd(name), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_user_error(p, *words):
    "Exit status 2, one `error:` line mentioning `words`, and no traceback."
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert 'Traceback' not in p.stderr and p.stderr.startswith('error:'), p.stderr
    for w in words: assert w in p.stderr, (w, p.stderr)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    p = run('ddpm_train', '--out', 'run', '--epochs', '2', *TINY, cwd=d)
    assert p.returncode == 0, p.stderr
    return d


def test_train_writes_checkpoint_and_grid(trained):
    ck = load_checkpoint(trained / 'run' / 'checkpoint.pt')
    assert ck['epoch'] == 2 and len(ck['history']) == 2
    assert {'model', 'ema', 'opt', 'config', 'library_version'} <= set(ck)
    assert ck['config']['channels'] == (8, 16)
    png = trained / 'run' / 'samples.png'
    assert png.exists() and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list((trained / 'run').glob('*.tmp'))          # no temporary files left behind


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_sample_writes_grid_and_tensor(trained, sampler):
    p = run('ddpm_sample', '--ckpt', 'run', '--n', '3', '--sampler', sampler, '--steps', '5', '--out', f'{sampler}.png',
            '--tensor', f'{sampler}.pt', '--quiet', cwd=trained)
    assert p.returncode == 0, p.stderr
    x = torch.load(trained / f'{sampler}.pt')
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert (trained / f'{sampler}.png').exists()


def test_sampling_is_reproducible(trained):
    for i in (1, 2):
        assert run('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '4', '--seed', '7', '--out', f'r{i}.png',
                   '--tensor', f'r{i}.pt', '--quiet', cwd=trained).returncode == 0
    assert torch.equal(torch.load(trained / 'r1.pt'), torch.load(trained / 'r2.pt'))


@pytest.mark.parametrize('args,words', [
    (['--steps', '-3'], ['--steps', 'positive']),
    (['--eta', '1.5'], ['--eta', '[0, 1]']),
    (['--sampler', 'euler'], ['--sampler', 'ddpm', 'ddim']),
    (['--n', '0'], ['--n']),
    (['--steps', '51'], ['--steps', 'T=50']),
    (['--out', 'grid.xyz'], ['unknown image suffix', '.xyz']),
])
def test_bad_flag_values(trained, args, words):
    assert_user_error(run('ddpm_sample', '--ckpt', 'run', '--quiet', *args, cwd=trained), *words)


def test_missing_and_corrupt_checkpoints(trained):
    assert_user_error(run('ddpm_sample', '--ckpt', 'nope.pt', cwd=trained), 'not found', 'nope.pt')
    (trained / 'junk.pt').write_bytes(b'this is not a checkpoint')
    assert_user_error(run('ddpm_sample', '--ckpt', 'junk.pt', cwd=trained), 'corrupt')
    torch.save({'hello': 1}, trained / 'other.pt')
    assert_user_error(run('ddpm_sample', '--ckpt', 'other.pt', cwd=trained), 'not a ddpm_from_scratch checkpoint')
    torch.save({'format': 1, 'config': {'channels': (8, 16), 'n_steps': 50}, 'epoch': 1,
                'model': {'conv_in.weight': torch.zeros(3)}}, trained / 'mismatch.pt')
    assert_user_error(run('ddpm_sample', '--ckpt', 'mismatch.pt', cwd=trained), 'do not fit its configuration')


def test_incompatible_resume_and_existing_output(trained):
    assert_user_error(run('ddpm_train', '--out', 'run', '--epochs', '2', *TINY, cwd=trained), 'exists', '--resume')
    p = run('ddpm_train', '--out', 'run', '--epochs', '2', '--resume', '--channels', '16,32', '--bs', '64',
            '--n_train', '256', '--n_steps', '50', '--quiet', cwd=trained)
    assert_user_error(p, 'different configuration', 'channels')


def test_unwritable_output_directory(trained):
    (trained / 'afile').write_text('x')
    assert_user_error(run('ddpm_train', '--out', 'afile/sub', '--epochs', '1', *TINY, cwd=trained), 'cannot write')
    assert_user_error(run('ddpm_sample', '--ckpt', 'run', '--out', 'afile/x.png', '--quiet', cwd=trained), 'cannot write')


def test_bad_training_flags(trained):
    assert_user_error(run('ddpm_train', '--out', 'x', '--epochs', '0', *TINY, cwd=trained), 'epochs')
    assert_user_error(run('ddpm_train', '--out', 'x', '--schedule', 'quadratic', *TINY, cwd=trained), 'schedule')
    assert_user_error(run('ddpm_train', '--out', 'x', '--channels', '8,1x', cwd=trained), 'channels')
    assert_user_error(run('ddpm_train', '--out', 'x', '--skip', 'sum', *TINY, cwd=trained), 'skip must be add, cat or dense')
    assert_user_error(run('ddpm_train', '--out', 'x', '--mid', '-1', *TINY, cwd=trained), 'mid')


def test_nonfinite_loss_stops_with_message_and_no_empty_folder(tmp_path):
    p = run('ddpm_train', '--out', 'new/nan', '--epochs', '1', '--lr', '1e12', *TINY, cwd=tmp_path)
    assert p.returncode == 3 and 'Traceback' not in p.stderr
    assert 'nan' in p.stderr.lower() and 'lower learning rate' in p.stderr
    assert not (tmp_path / 'new').exists()   # the failed run removed the folders it created
    (tmp_path / 'old').mkdir()
    assert run('ddpm_train', '--out', 'old', '--epochs', '1', '--lr', '1e12', *TINY, cwd=tmp_path).returncode == 3
    assert (tmp_path / 'old').is_dir()       # ...but not one that was there before


@pytest.mark.parametrize('suffix,magic', [('png', b'\x89PNG'), ('jpg', b'\xff\xd8\xff'), ('JPEG', b'\xff\xd8\xff'), ('bmp', b'BM')])
def test_sample_writes_the_format_its_name_says(trained, suffix, magic):
    p = run('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '2', '--out', f'f.{suffix}', '--quiet', cwd=trained)
    assert p.returncode == 0, p.stderr
    assert (trained / f'f.{suffix}').read_bytes()[:len(magic)] == magic


def test_outputs_get_the_umask_mode(tmp_path):
    def run_umask(*args):
        return subprocess.run([cmd(args[0]), *args[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                              timeout=300, preexec_fn=lambda: os.umask(0o027))
    assert run_umask('ddpm_train', '--out', 'run', '--epochs', '1', *TINY).returncode == 0
    assert run_umask('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '2', '--out', 'g.png',
                     '--tensor', 'g.pt', '--quiet').returncode == 0
    for f in ('run/checkpoint.pt', 'run/samples.png', 'g.png', 'g.pt'):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o640, f   # 0o666 & ~0o027, not mkstemp's 0o600


def test_help_explains_every_flag():
    for name, flags in (('ddpm_train', ['--out', '--epochs', '--schedule', '--resume', '--precision', '--minutes', '--ckpt_minutes', '--ema']),
                        ('ddpm_sample', ['--ckpt', '--sampler', '--steps', '--eta', '--seed', '--tensor', '--classes', '--w']),
                        ('ddpm_eval', ['--ckpt', '--n', '--sampler', '--steps', '--eta'])):
        p = subprocess.run([cmd(name), '--help'], capture_output=True, text=True, env=ENV)
        assert p.returncode == 0
        for f in flags: assert f in p.stdout, (name, f)


def test_flag_defaults_are_the_config_defaults():
    "ddpm_train's defaults come from TrainConfig, so the recipe the sweep chose has one home."
    import inspect
    from ddpm_from_scratch import cli
    sig, cfg = inspect.signature(cli.ddpm_train.__wrapped__), TrainConfig()
    as_flag = lambda v: ','.join(map(str, v)) if isinstance(v, tuple) else v
    shared = [n for n in sig.parameters if hasattr(cfg, n) and n != 'n_classes']   # n_classes: 0 on the command line means None
    assert len(shared) >= 14
    for name in shared: assert sig.parameters[name].default == as_flag(getattr(cfg, name)), name


def test_sampling_flags_default_to_SampleConfig():
    "ddpm_sample and ddpm_eval read their sampling defaults from SampleConfig: one home for them."
    import inspect
    from ddpm_from_scratch import cli
    from ddpm_from_scratch.cli import SampleConfig
    s = SampleConfig()
    assert (s.eta, s.clip) == (1., False)   # the measured setting (notebooks 11, 12), not DDIM's textbook default
    assert SampleConfig.default(3.) == SampleConfig(eta=0., clip=True)   # guidance above 1: the textbook setting measured best
    assert SampleConfig.default(1.) == SampleConfig.default(None) == s
    ev = inspect.signature(cli.ddpm_eval.__wrapped__).parameters
    for name in ('sampler', 'steps', 'eta', 'clip'): assert ev[name].default == getattr(s, name), name
    sp = inspect.signature(cli.ddpm_sample.__wrapped__).parameters
    assert (sp['sampler'].default, sp['steps'].default) == (s.sampler, s.steps)
    assert sp['eta'].default is None and sp['clip'].default is None   # resolved by SampleConfig.default(w)


def test_eta_and_clip_flags_reach_the_sampler(trained):
    "--eta 0 and --clip true each change the images (same seed); the defaults equal `ddim.generate` with SampleConfig's options."
    from ddpm_from_scratch.cli import SampleConfig, build_schedule, load_model
    from ddpm_from_scratch.ddim import generate
    outs = {}
    for name, extra in (('default', []), ('eta0', ['--eta', '0']), ('clip', ['--clip', 'true']), ('noclip', ['--clip', 'false'])):
        assert run('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '4', '--seed', '3', '--out', f'{name}.png',
                   '--tensor', f'{name}.pt', '--quiet', *extra, cwd=trained).returncode == 0
        outs[name] = torch.load(trained / f'{name}.pt')
    assert not torch.equal(outs['default'], outs['eta0']) and not torch.equal(outs['default'], outs['clip'])
    assert torch.equal(outs['default'], outs['noclip'])
    model, cfg = load_model(trained / 'run')
    s = SampleConfig()
    ref = generate(model, build_schedule(cfg), 2, s.sampler, seed=3, progress=False, steps=4, eta=s.eta, clip=s.clip)
    assert torch.allclose(outs['default'], ref, atol=1e-5)


def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    "SIGKILL right after the first checkpoint (strictly before the end); --resume trains the rest and ends where an uninterrupted run ends."
    args = ['--epochs', '3', '--channels', '8,16', '--bs', '64', '--n_train', '1024', '--n_steps', '50', '--samples', '4', '--quiet']
    assert run('ddpm_train', '--out', 'full', *args, cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([cmd('ddpm_train'), '--out', 'cut', *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / 'cut' / 'checkpoint.pt'
    t0 = time.time()
    while not ck.exists() and proc.poll() is None and time.time() - t0 < 240: time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)  # freeze it at once: the kill lands right after the first checkpoint
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert ck.exists(), "no checkpoint was written before the kill"
    cut = load_checkpoint(ck)
    done = cut['epoch']
    assert 1 <= done < 3, f"the kill landed after epoch {done}: nothing would be left to resume"
    a = load_checkpoint(tmp_path / 'full' / 'checkpoint.pt')
    assert not torch.equal(a['model']['conv_out.weight'], cut['model']['conv_out.weight'])
    p = run('ddpm_train', '--out', 'cut', '--resume', *args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    b = load_checkpoint(ck)
    assert b['epoch'] == 3 and len(b['history']) == 3 and b['history'][:done] == cut['history']
    for k in a['model']: torch.testing.assert_close(a['model'][k], b['model'][k], rtol=1e-4, atol=1e-5)
    for k in a['ema']: torch.testing.assert_close(a['ema'][k], b['ema'][k], rtol=1e-4, atol=1e-5)
    assert a['history'] == pytest.approx(b['history'], rel=1e-4)


def test_eval_reports_fid_with_floor(trained):
    from ddpm_from_scratch.classifier import classifier_paths
    if not classifier_paths()[0].exists(): pytest.skip("the shipped classifier weights are not there")
    p = run('ddpm_eval', '--ckpt', 'run', '--n', '64', '--steps', '3', '--json_out', 'scores.json', '--quiet', cwd=trained, timeout=600)
    assert p.returncode == 0, p.stderr
    import json
    r = json.loads((trained / 'scores.json').read_text())
    assert r['fid'] > r['floor_fid'] > 0 and 'real-data floor' in p.stdout


def test_warmup_ema_forgets_the_start_quickly():
    ema = WarmupEMA(0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999
    avg, p = torch.zeros(3), torch.ones(3)
    for n in range(200): avg = ema(avg, p, torch.tensor(n))
    assert (avg > 0.9).all()    # a fixed decay of 0.999 would still be at 1 - 0.999**200 = 0.18


def test_warmup_cosine():
    lrs = [warmup_cosine(s, 1.0, 200, 0.1) for s in range(200)]
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == 1.0 and max(lrs) == 1.0
    assert lrs[20 + 90] == pytest.approx(0.5, abs=0.01)              # half-way through the decay
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:])) and lrs[-1] < 1e-3
    assert warmup_cosine(500, 1.0, 200, 0.1) == 0.                    # past the end


def test_config_is_the_single_source_of_truth():
    cfg = TrainConfig(channels=(8, 16), n_steps=50, schedule='cosine', n_classes=10)
    m = build_model(cfg)
    assert m.n_classes == 10 and m.config['groups'] == 4               # ddpm.default_groups((8, 16))
    s = build_schedule(cfg)
    assert torch.allclose(s.alpha_bar, Schedule.cosine(50).alpha_bar)
    assert torch.allclose(build_schedule(TrainConfig(n_steps=50, schedule='linear')).beta, Schedule.linear(n_steps=50).beta)
    for bad in (dict(schedule='quadratic'), dict(n_classes=0), dict(p_uncond=2.), dict(warmup=1.), dict(n_train=8, bs=64)):
        with pytest.raises(UserError): TrainConfig(**bad)
    with pytest.raises(UserError, match='channels'): build_model(TrainConfig(channels=(3, 5)))


def test_minutes_sets_the_steps_from_the_measured_speed(tmp_path):
    "A time budget becomes a step count recorded in the config; the run ends near the budget; resume keeps the count."
    from ddpm_from_scratch.cli import train_ddpm
    cfg = TrainConfig(channels=(8, 16), bs=32, n_train=256, n_steps=50, ema=0.9)
    t0 = time.time()
    ck = load_checkpoint(train_ddpm(cfg, tmp_path / 'b', progress=False, n_samples=0, minutes=0.1))
    secs = time.time() - t0
    steps = ck['config']['total_steps']
    assert steps > 20 and ck['step'] == steps and 3 < secs < 15, (steps, secs)   # 6 s asked for
    assert TrainConfig.from_dict(ck['config']).epochs == -(-steps // 8)
    # --resume with the same --minutes continues the same run (its recorded step count), here: nothing left to do
    again = train_ddpm(cfg, tmp_path / 'b', resume=True, progress=False, n_samples=0, minutes=0.1)
    assert load_checkpoint(again)['step'] == steps
    with pytest.raises(UserError, match='minutes'): train_ddpm(cfg, tmp_path / 'c', progress=False, minutes=-1)


def test_minutes_replans_from_the_runs_own_speed(tmp_path, monkeypatch, capsys):
    "A first estimate 3x off (a timing that says steps are 3x faster than they are) is corrected by the run's own speed."
    import re
    from ddpm_from_scratch import cli
    real = cli.measure_step_seconds
    monkeypatch.setattr(cli, 'measure_step_seconds', lambda *a, **k: real(*a, **k) / 3)
    cfg = TrainConfig(channels=(8, 16), bs=32, n_train=256, n_steps=50, ema=0.9)
    t0 = time.time()
    ck = load_checkpoint(cli.train_ddpm(cfg, tmp_path / 'b', progress=True, n_samples=0, minutes=0.1))
    secs, out = time.time() - t0, capsys.readouterr().out
    estimate, steps = int(re.search(r'so about (\d+) steps', out)[1]), int(re.search(r'so (\d+) steps in all', out)[1])
    assert ck['config']['total_steps'] == ck['step'] == steps < estimate / 2, (estimate, steps)
    assert TrainConfig.from_dict(ck['config']).epochs == -(-steps // 8)  # the checkpoint records the re-planned run
    assert secs < 12, secs   # 6 s asked for; the estimate alone would have taken about 18


def test_dense_layout_trains_and_rebuilds_from_its_checkpoint(tmp_path):
    "--skip dense --mid 2 (the DDPM layout) reaches the network, and the checkpoint rebuilds that network to sample."
    p = run('ddpm_train', '--out', 'dense', '--epochs', '1', '--skip', 'dense', '--mid', '2', *TINY, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    model, cfg = model_from_checkpoint(load_checkpoint(tmp_path / 'dense'))
    assert (cfg.skip, cfg.mid) == ('dense', 2) and (model.config['skip'], model.config['mid']) == ('dense', 2)
    assert len(model.up_levels) == 2 and len(model.mid.blocks) == 2   # an up level at both resolutions, and a middle
    p = run('ddpm_sample', '--ckpt', 'dense', '--out', 'g.png', '--n', '2', '--steps', '2', '--quiet', cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / 'g.png').exists(), p.stderr


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    p = run('ddpm_train', '--out', 'new', '--epochs', '1', '--resume', *TINY, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert 'starts from the beginning' in p.stdout and load_checkpoint(tmp_path / 'new')['epoch'] == 1


def test_precision_is_resolved_and_reported(tmp_path):
    from ddpm_from_scratch.mixed import native_bf16
    p = run('ddpm_train', '--out', 'p', '--epochs', '1', *[a for a in TINY if a != '--quiet'], '--precision', 'fp32', cwd=tmp_path)
    assert p.returncode == 0 and 'precision: fp32 (as asked)' in p.stdout, p.stdout
    p = run('ddpm_train', '--out', 'a', '--epochs', '1', *[a for a in TINY if a != '--quiet'], cwd=tmp_path)
    assert p.returncode == 0 and f"precision: {'bf16' if native_bf16('cpu') else 'fp32'} (auto" in p.stdout, p.stdout
    assert_user_error(run('ddpm_train', '--out', 'x', '--precision', 'fp8', *TINY, cwd=tmp_path), 'precision')
    # checkpoints written before `precision` existed still load
    old = dict(TrainConfig().__dict__); old.pop('precision'); old.pop('total_steps'); old['mixed_precision'] = True
    assert TrainConfig.from_dict(old).precision == 'bf16'


def test_class_conditional_sampling_and_pretrained(tmp_path):
    assert run('ddpm_train', '--out', 'c', '--epochs', '1', '--n_classes', '10', *TINY, cwd=tmp_path).returncode == 0
    p = run('ddpm_sample', '--ckpt', 'c', '--n', '4', '--steps', '3', '--classes', '1,7', '--w', '2', '--tensor', 'c.pt',
            '--quiet', cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert torch.load(tmp_path / 'c.pt').shape == (4, 1, 32, 32)
    for name, extra in (('c0', ['--eta', '0', '--clip', 'true']), ('c1', ['--eta', '1', '--clip', 'false'])):
        assert run('ddpm_sample', '--ckpt', 'c', '--n', '4', '--steps', '3', '--classes', '1,7', '--w', '2', '--tensor', f'{name}.pt',
                   '--out', f'{name}.png', '--quiet', *extra, cwd=tmp_path).returncode == 0
    c = torch.load(tmp_path / 'c.pt')   # guiding with w > 1 defaults to eta 0 and clamping (SampleConfig.default)
    assert torch.equal(c, torch.load(tmp_path / 'c0.pt')) and not torch.equal(c, torch.load(tmp_path / 'c1.pt'))
    assert_user_error(run('ddpm_sample', '--ckpt', 'c', '--classes', '10', '--quiet', cwd=tmp_path), 'classes', '[0, 9]')
    assert_user_error(run('ddpm_sample', '--ckpt', 'c', '--classes', 'x', '--quiet', cwd=tmp_path), 'classes')
    assert run('ddpm_train', '--out', 'u', '--epochs', '1', *TINY, cwd=tmp_path).returncode == 0
    assert_user_error(run('ddpm_sample', '--ckpt', 'u', '--classes', 'all', '--quiet', cwd=tmp_path), 'class-conditional')
