"End-to-end tests of the console scripts `ddpm_train`, `ddpm_sample` and `ddpm_eval` on tiny configurations."
import os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from ddpm_from_scratch.cli import load_checkpoint, model_from_checkpoint

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


def test_ddim_eta0_is_reproducible(trained):
    for i in (1, 2):
        assert run('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '4', '--seed', '7', '--out', f'r{i}.png',
                   '--tensor', f'r{i}.pt', '--quiet', cwd=trained).returncode == 0
    assert torch.equal(torch.load(trained / 'r1.pt'), torch.load(trained / 'r2.pt'))


@pytest.mark.parametrize('args,words', [
    (['--steps', '-3'], ['--steps', 'positive']),
    (['--eta', '1.5'], ['--eta', '[0, 1]']),
    (['--sampler', 'euler'], ['--sampler', 'ddpm', 'ddim']),
    (['--n', '0'], ['--n']),
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


def test_nonfinite_loss_stops_with_message(tmp_path):
    p = run('ddpm_train', '--out', 'nan', '--epochs', '1', '--lr', '1e12', *TINY, cwd=tmp_path)
    assert p.returncode == 3 and 'Traceback' not in p.stderr
    assert 'nan' in p.stderr.lower() and 'lower learning rate' in p.stderr


def test_help_explains_every_flag():
    for name, flags in (('ddpm_train', ['--out', '--epochs', '--schedule', '--resume', '--mixed_precision', '--ema']),
                        ('ddpm_sample', ['--ckpt', '--sampler', '--steps', '--eta', '--seed', '--tensor']),
                        ('ddpm_eval', ['--ckpt', '--n', '--sampler', '--steps', '--eta'])):
        p = subprocess.run([cmd(name), '--help'], capture_output=True, text=True, env=ENV)
        assert p.returncode == 0
        for f in flags: assert f in p.stdout, (name, f)


def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    "SIGKILL after the first checkpoint leaves it loadable; --resume then ends where an uninterrupted run ends."
    args = ['--epochs', '3', *TINY]
    assert run('ddpm_train', '--out', 'full', *args, cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([cmd('ddpm_train'), '--out', 'cut', *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / 'cut' / 'checkpoint.pt'
    t0 = time.time()
    while not ck.exists() and proc.poll() is None and time.time() - t0 < 240: time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert ck.exists(), "no checkpoint was written before the kill"
    done = load_checkpoint(ck)['epoch']
    assert 1 <= done <= 3
    p = run('ddpm_train', '--out', 'cut', '--resume', *args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = load_checkpoint(tmp_path / 'full' / 'checkpoint.pt'), load_checkpoint(ck)
    assert b['epoch'] == 3
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
    from ddpm_from_scratch.cli import WarmupEMA
    ema = WarmupEMA(0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999
    avg, p = torch.zeros(3), torch.ones(3)
    for n in range(200): avg = ema(avg, p, torch.tensor(n))
    assert (avg > 0.9).all()    # a fixed decay of 0.999 would still be at 1 - 0.999**200 = 0.18
