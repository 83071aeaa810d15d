"""The console scripts `ddpm_train`, `ddpm_sample`, `ddpm_eval` and `ddpm_phema`: flags parsed as a shell passes them, run in this
process (`main`), and a few runs of the installed scripts in their own processes (exit codes, a kill, `--help`)."""
import inspect, os, shutil, signal, subprocess, sys, time
from contextlib import chdir

import pytest
import torch
from fastcore.script import anno_parser

from ddpm_from_scratch import cli
from ddpm_from_scratch.ode import SampleConfig
from ddpm_from_scratch.train import TrainConfig, build_schedule, load_checkpoint, load_model

TINY = ['--channels', '8,16', '--bs', '64', '--n_train', '256', '--n_steps', '50', '--samples', '4', '--quiet']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'DDPM_DEVICE': 'cpu', 'MPLBACKEND': 'Agg'}


def main(name:str, *argv, cwd)->int:
    "Run console script `name` with command-line arguments `argv` in folder `cwd`, in this process; its exit status."
    f = getattr(cli, name).__wrapped__
    args = vars(anno_parser(f).parse_args([str(a) for a in argv]))
    args = {k: v for k, v in args.items() if k in inspect.signature(f).parameters}  # fastcore adds --pdb and --xtra
    with chdir(cwd): return f(**args) or 0


def cmd(name):
    exe = shutil.which(name)
    assert exe, f"console script {name} is not installed: run `pip install -e .`"
    return exe


def run(name, *args, cwd, timeout=300):
    "Run the installed console script in its own process."
    return subprocess.run([cmd(name), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def user_error(code:int, capsys, *words):
    "Exit status 2 and one `error:` line on stderr mentioning `words`."
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error:') and len(err.strip().splitlines()) == 1, (code, err)
    for w in words: assert w in err, (w, err)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    assert main('ddpm_train', '--out', 'run', '--epochs', '2', *TINY, cwd=d) == 0
    return d


def test_train_writes_checkpoint_and_grid(trained):
    ck = load_checkpoint(trained / 'run' / 'checkpoint.pt')
    assert ck['epoch'] == 2 and ck['config']['channels'] == (8, 16)
    assert (trained / 'run' / 'samples.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_sample_writes_grid_and_tensor(trained, sampler):
    assert main('ddpm_sample', '--ckpt', 'run', '--n', '3', '--sampler', sampler, '--steps', '5', '--out', f'{sampler}.png',
                '--tensor', f'{sampler}.pt', '--quiet', cwd=trained) == 0
    x = torch.load(trained / f'{sampler}.pt')
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and (trained / f'{sampler}.png').exists()


def test_sampling_flags_reach_the_sampler_and_repeat(trained):
    "Same seed, same images; with --sampler ddim, --eta 0 and --clip true change them; the defaults are `generate` with SampleConfig's."
    outs = {}
    for name, extra in (('default', []), ('again', []), ('ddim', ['--sampler', 'ddim']), ('eta0', ['--sampler', 'ddim', '--eta', '0']),
                        ('clip', ['--sampler', 'ddim', '--clip', 'true']), ('noclip', ['--sampler', 'ddim', '--clip', 'false']),
                        ('seed8', ['--seed', '8'])):
        assert main('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '4', '--seed', '3', '--out', f'{name}.png',
                    '--tensor', f'{name}.pt', '--quiet', *extra, cwd=trained) == 0
        outs[name] = torch.load(trained / f'{name}.pt')
    assert torch.equal(outs['default'], outs['again']) and torch.equal(outs['ddim'], outs['noclip'])
    assert not any(torch.equal(outs['default'], outs[k]) for k in ('ddim', 'seed8'))
    assert not any(torch.equal(outs['ddim'], outs[k]) for k in ('eta0', 'clip'))
    model, cfg = load_model(trained / 'run')
    from ddpm_from_scratch.ddim import generate
    s = SampleConfig()
    ref = generate(model, build_schedule(cfg), 2, s.sampler, seed=3, progress=False, **{**s.options(), 'steps': 4})
    assert torch.allclose(outs['default'], ref, atol=1e-5)
    ref = generate(model, build_schedule(cfg), 2, 'ddim', seed=3, progress=False, steps=4, eta=s.eta, clip=s.clip)
    assert torch.allclose(outs['ddim'], ref, atol=1e-5)


@pytest.mark.parametrize('args,words', [
    (['--steps', '-3'], ['--steps', 'positive']),
    (['--sampler', 'ddim', '--eta', '1.5'], ['--eta', '[0, 1]']),
    (['--eta', '0'], ['--eta', 'option of ddim', 'dpmpp_2m_sde']),
    (['--sampler', 'plms'], ['--sampler', 'ddpm', 'ddim', 'dpmpp_2m_sde']),
    (['--sampler', 'ddim', '--churn', '1'], ['--churn', 'heun']),
    (['--sampler', 'ddim', '--karras', 'true'], ['--karras', 'not of ddim']),
    (['--n', '0'], ['--n']),
    (['--steps', '51'], ['--steps', 'T=50']),
    (['--out', 'grid.xyz'], ['unknown image suffix', '.xyz']),
    (['--device', 'tpu'], ['--device', 'tpu', 'cpu, cuda']),
    (['--ckpt', 'nope.pt'], ['not found', 'nope.pt']),
])
def test_bad_sampling_flags(trained, capsys, args, words):
    user_error(main('ddpm_sample', '--ckpt', 'run', '--quiet', *args, cwd=trained), capsys, *words)


def test_bad_training_flags(trained, capsys):
    for args, words in ((['--epochs', '0'], ['epochs']), (['--schedule', 'quadratic'], ['schedule']),
                        (['--skip', 'sum'], ['skip must be add, cat or dense']), (['--mid', '-1'], ['mid']),
                        (['--minutes', '0'], ['--minutes', 'positive']), (['--minutes', '-1'], ['--minutes']),
                        (['--precision', 'fp8'], ['precision']), (['--device', 'tpu'], ['--device'])):
        user_error(main('ddpm_train', '--out', 'x', *TINY, *args, cwd=trained), capsys, *words)
        assert not (trained / 'x').exists()
    user_error(main('ddpm_train', '--out', 'x', '--channels', '8,1x', cwd=trained), capsys, 'channels')
    user_error(main('ddpm_train', '--out', 'run', '--epochs', '2', *TINY, cwd=trained), capsys, 'exists', '--resume')
    user_error(main('ddpm_train', '--out', 'run', '--epochs', '2', '--resume', *TINY[:1], '16,32', *TINY[2:], cwd=trained),
               capsys, 'different configuration', 'channels')
    (trained / 'afile').write_text('x')
    user_error(main('ddpm_train', '--out', 'afile/sub', '--epochs', '1', *TINY, cwd=trained), capsys, 'cannot write')
    user_error(main('ddpm_sample', '--ckpt', 'run', '--out', 'afile/x.png', '--quiet', cwd=trained), capsys, 'cannot write')


def test_nonfinite_loss_exits_3(tmp_path, capsys):
    assert main('ddpm_train', '--out', 'nan', '--epochs', '1', '--lr', '1e12', *TINY, cwd=tmp_path) == 3
    err = capsys.readouterr().err
    assert err.startswith('error:') and 'lower learning rate' in err


@pytest.mark.parametrize('suffix,magic', [('png', b'\x89PNG'), ('jpg', b'\xff\xd8\xff'), ('JPEG', b'\xff\xd8\xff'), ('bmp', b'BM')])
def test_sample_writes_the_format_its_name_says(trained, suffix, magic):
    assert main('ddpm_sample', '--ckpt', 'run', '--n', '2', '--steps', '2', '--out', f'f.{suffix}', '--quiet', cwd=trained) == 0
    assert (trained / f'f.{suffix}').read_bytes()[:len(magic)] == magic


def test_flag_defaults_are_the_config_defaults():
    "ddpm_train's defaults come from TrainConfig, so the recipe has one home."
    sig, cfg = inspect.signature(cli.ddpm_train.__wrapped__), TrainConfig()
    as_flag = lambda v: ','.join(map(str, v)) if isinstance(v, tuple) else v
    shared = [n for n in sig.parameters if hasattr(cfg, n) and n != 'n_classes']   # n_classes: 0 on the command line means None
    assert len(shared) >= 14
    for name in shared: assert sig.parameters[name].default == as_flag(getattr(cfg, name)), name


def test_sampling_flags_default_to_SampleConfig():
    "ddpm_sample and ddpm_eval take what is not given from SampleConfig.default(w): one home for the defaults."
    s = SampleConfig()
    assert (s.sampler, s.steps, s.karras) == ('dpmpp_2m_sde', 20, True) and (s.eta, s.clip) == (1., False)   # the measured setting
    assert SampleConfig.default(3.) == SampleConfig(sampler='ddim', steps=50, eta=0., clip=True)   # guidance above 1: the textbook DDIM
    assert SampleConfig.default(1.) == SampleConfig.default(None) == s
    for f in (cli.ddpm_eval, cli.ddpm_sample):
        ps = inspect.signature(f.__wrapped__).parameters
        assert all(ps[k].default is None for k in ('sampler', 'steps', 'eta', 'clip'))   # resolved by SampleConfig.default(w)
    cfg = TrainConfig(channels=(8, 16), n_steps=50, bs=8, n_train=8)
    assert cli._sampling(None, None, None, None, None, 0., None, cfg) == ('dpmpp_2m_sde', dict(steps=20, karras=True))
    assert cli._sampling('dpmpp_2m', None, None, None, None, 0., None, cfg) == ('dpmpp_2m', dict(steps=20, karras=False))
    assert cli._sampling(None, None, None, None, None, 0., 3., cfg) == ('ddim', dict(steps=50, eta=0., clip=True))
    assert cli._sampling('ddim', None, None, None, None, 0., None, cfg) == ('ddim', dict(steps=50, eta=1., clip=False))
    assert cli._sampling('heun', 5, None, None, False, 2., None, cfg) == ('heun', dict(steps=5, karras=False, churn=2.))
    with pytest.raises(ValueError, match='--eta is an option of ddim'): cli._sampling(None, None, 0., None, None, 0., None, cfg)


def test_class_conditional_sampling(tmp_path, capsys):
    assert main('ddpm_train', '--out', 'c', '--epochs', '1', '--n_classes', '10', *TINY, cwd=tmp_path) == 0
    outs = {}
    for name, extra in (('c', []), ('c0', ['--eta', '0', '--clip', 'true']), ('c1', ['--eta', '1', '--clip', 'false'])):
        assert main('ddpm_sample', '--ckpt', 'c', '--n', '4', '--steps', '3', '--classes', '1,7', '--w', '2', '--tensor',
                    f'{name}.pt', '--out', f'{name}.png', '--quiet', *extra, cwd=tmp_path) == 0
        outs[name] = torch.load(tmp_path / f'{name}.pt')
    assert outs['c'].shape == (4, 1, 32, 32)
    # guiding with w > 1 defaults to eta 0 and clamping (SampleConfig.default)
    assert torch.equal(outs['c'], outs['c0']) and not torch.equal(outs['c'], outs['c1'])
    user_error(main('ddpm_sample', '--ckpt', 'c', '--classes', '10', '--quiet', cwd=tmp_path), capsys, 'classes', '[0, 9]')
    user_error(main('ddpm_sample', '--ckpt', 'c', '--classes', 'x', '--quiet', cwd=tmp_path), capsys, 'classes')
    assert main('ddpm_train', '--out', 'u', '--epochs', '1', *TINY, cwd=tmp_path) == 0
    user_error(main('ddpm_sample', '--ckpt', 'u', '--classes', 'all', '--quiet', cwd=tmp_path), capsys, 'class-conditional')


def test_classes_grid_has_a_labelled_row_per_class(tmp_path):
    "--classes lays the grid out one row per class (short rows padded), with the class names in a margin."
    from PIL import Image
    assert main('ddpm_sample', '--ckpt', 'pretrained', '--classes', '3,8,3', '--n', '5', '--steps', '2', '--out', 'g.png',
                '--tensor', 'g.pt', '--quiet', cwd=tmp_path) == 0
    im = Image.open(tmp_path / 'g.png')
    # two rows (Dress: 3 images; Bag: 2 and a blank) of 32x32 images with 2-pixel gaps, upscaled twice, and a margin
    assert im.height == 2 * (2 * 34 + 2) and im.width > 2 * (3 * 34 + 2)
    assert torch.load(tmp_path / 'g.pt').shape == (5, 1, 32, 32)
    grid, ncols, labels = cli._by_class(torch.zeros(5, 1, 4, 4), torch.tensor([3, 8, 3, 3, 8]))
    assert ncols == 3 and grid.shape == (6, 1, 4, 4) and labels == ['3 Dress', '8 Bag'] and (grid[5] == -1).all()


def test_progress_in_a_log_is_a_few_plain_lines(trained, capsys):
    "Written to a file (here: captured, not a terminal), progress is a few lines, not hundreds of carriage-return updates."
    assert main('ddpm_sample', '--ckpt', 'run', '--n', '3', '--steps', '20', '--out', 'log.png', cwd=trained) == 0
    err = capsys.readouterr().err
    assert '\r' not in err and 2 <= len(err.splitlines()) <= 8, err
    assert main('ddpm_sample', '--ckpt', 'run', '--n', '130', '--steps', '2', '--out', 'log.png', cwd=trained) == 0
    err = capsys.readouterr().err   # three batches of 64: a line per batch, no per-step lines
    assert err.splitlines() == [f'dpmpp_2m_sde, batches of 64: {i}/3' for i in (1, 2, 3)], err


@pytest.mark.slow
def test_installed_scripts_report_errors_and_help(tmp_path):
    "The installed script: an `error:` line and status 2 for a mistake, no traceback; --help explains every flag."
    p = run('ddpm_sample', '--ckpt', 'nope.pt', cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith('error:') and 'Traceback' not in p.stderr, p.stderr
    for name, flags in (('ddpm_train', ['--out', '--epochs', '--schedule', '--resume', '--precision', '--minutes', '--ckpt_minutes', '--ema']),
                        ('ddpm_sample', ['--ckpt', '--sampler', '--steps', '--eta', '--seed', '--tensor', '--classes', '--w']),
                        ('ddpm_eval', ['--ckpt', '--n', '--sampler', '--steps', '--eta']),
                        ('ddpm_phema', ['--run', '--sigma_rels', '--n', '--sampler', '--seed', '--json_out'])):
        text = anno_parser(getattr(cli, name).__wrapped__).format_help()   # what `name --help` prints
        for f in flags: assert f in text, (name, f)


@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    "SIGKILL right after the first checkpoint; --resume trains the rest and ends where an uninterrupted run ends."
    args = ['--epochs', '3', *TINY]
    assert main('ddpm_train', '--out', 'full', *args, cwd=tmp_path) == 0
    proc = subprocess.Popen([cmd('ddpm_train'), '--out', 'cut', *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / 'cut' / 'checkpoint.pt'
    t0 = time.time()
    while not ck.exists() and proc.poll() is None and time.time() - t0 < 240: time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)  # freeze it at once: the kill lands right after the first checkpoint
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert ck.exists(), "no checkpoint was written before the kill"
    cut = load_checkpoint(ck)
    assert cut['step'] < 12, "the kill landed after the last step: nothing would be left to resume"
    assert main('ddpm_train', '--out', 'cut', '--resume', *args, cwd=tmp_path) == 0
    a, b = load_checkpoint(tmp_path / 'full' / 'checkpoint.pt'), load_checkpoint(ck)
    assert b['epoch'] == 3 and len(b['history']) == 3
    for k in a['model']: torch.testing.assert_close(a['model'][k], b['model'][k], rtol=1e-4, atol=1e-5)
    for k in a['ema']: torch.testing.assert_close(a['ema'][k], b['ema'][k], rtol=1e-4, atol=1e-5)


def test_eval_reports_fid_with_floor(trained, capsys):
    from ddpm_from_scratch.classifier import classifier_paths
    if not classifier_paths()[0].exists(): pytest.skip("the shipped classifier weights are not there")
    assert main('ddpm_eval', '--ckpt', 'run', '--n', '64', '--steps', '3', '--json_out', 'scores.json', '--quiet', cwd=trained) == 0
    import json
    r = json.loads((trained / 'scores.json').read_text())
    assert r['fid'] > r['floor_fid'] > 0 and 'real-data floor' in capsys.readouterr().out


def test_phema_picks_a_length_and_writes_its_checkpoint(tmp_path, capsys):
    "ddpm_phema scores every length on the same samples, names the best, and writes a checkpoint ddpm_sample reads."
    import json
    assert main('ddpm_train', '--out', 'ph', '--epochs', '2', '--phema_every', '4', *TINY, cwd=tmp_path) == 0
    capsys.readouterr()
    assert main('ddpm_phema', '--run', 'ph', '--sigma_rels', '0.05, 0.15', '--n', '16', '--steps', '3', '--json_out', 'ph.json',
                '--quiet', cwd=tmp_path) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / 'ph.json').read_text())
    assert set(r['fids']) == {'0.05', '0.15'} and r['fids'][f"{r['best']:g}"] == min(r['fids'].values())
    assert r['sampler'] == 'dpmpp_2m_sde' and r['options'] == dict(steps=3, karras=True) and r['against'] == 'train'
    assert 'sigma_rel 0.05: FID' in out and f"best: sigma_rel {r['best']:g}" in out and r['path'] in out
    ck = load_checkpoint(tmp_path / r['path'])
    assert ck['phema_sigma_rel'] == r['best'] and 'opt' not in ck
    assert main('ddpm_sample', '--ckpt', r['path'], '--n', '2', '--steps', '2', '--quiet', cwd=tmp_path) == 0


@pytest.mark.parametrize('args,words', [
    (['--sigma_rels', '0.05,x'], ['sigma_rels', 'comma-separated numbers']),
    (['--sigma_rels', ','], ['--sigma_rels', 'at least one']),
    (['--sigma_rels', '0.5'], ['sigma_rel must be a number in (0, 0.28)', '0.5']),
    (['--n', '1'], ['--n', 'at least 2']),
    (['--eta', '0.5'], ['--eta is an option of ddim']),
])
def test_bad_phema_flags(trained, capsys, args, words):
    user_error(main('ddpm_phema', '--run', 'run', '--quiet', *args, cwd=trained), capsys, *words)


def test_phema_needs_a_run_that_kept_the_averages(trained, capsys):
    user_error(main('ddpm_phema', '--run', 'run', '--n', '4', '--steps', '2', '--quiet', cwd=trained), capsys,
               'no post-hoc EMA snapshots')
    user_error(main('ddpm_phema', '--run', 'nope', '--quiet', cwd=trained), capsys, 'not found')
