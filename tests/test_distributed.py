"`ddpm_train` under `accelerate launch` / `torchrun`: two CPU processes (gloo), rank-0-only files, sharded batches, identical weights, exact resume."
import json, os, shutil, socket, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from ddpm_from_scratch import train

FLAGS = ['--channels', '8,16', '--bs', '32', '--n_train', '256', '--n_steps', '50', '--epochs', '2', '--samples', '4', '--quiet']
CUT = 11  # optimiser steps before the cut: epoch 1, batch 3 (8 steps per epoch)


def _port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _env(log:Path)->dict:
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'DDPM_DEVICE': 'cpu', 'DDPM_RANK_LOG': str(log)}

def _run(cmd, log:Path, cwd:Path):
    r = subprocess.run(cmd, env=_env(log), cwd=cwd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r

def _logs(log:Path)->list: return [json.loads((log / f'rank{r}.json').read_text()) for r in (0, 1)]

def _torchrun(*args)->list:
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
            '--master_port', str(_port()), *args]

CUT_SCRIPT = textwrap.dedent(f'''
    import sys
    from ddpm_from_scratch import train
    from ddpm_from_scratch.learner import Callback, CancelFitException
    class Stop(Callback):
        order = 200  # after CheckpointCB wrote the step's checkpoint
        def after_step(self, learn):
            if train.global_step(learn) + 1 == {CUT}: raise CancelFitException()
    cfg = train.TrainConfig(channels=(8, 16), bs=32, n_train=256, n_steps=50, epochs=2)
    train.fit_recipe(cfg, path=sys.argv[1], ckpt_every=0, cbs=[Stop()])   # a checkpoint after every step, then a cut
''')


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which('ddpm_train') is None, reason='needs torch.distributed and ddpm_train')
@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    exe = shutil.which('ddpm_train')
    # 1. a whole run, launched the documented way
    acc = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_port())]
    r = _run([*acc, exe, '--out', str(tmp_path / 'a'), *FLAGS], tmp_path / 'log_a', tmp_path)
    assert r.stdout.count('checkpoint:') == 1, r.stdout          # only rank 0 prints
    assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == ['checkpoint.pt', 'samples.png']
    ck = train.load_checkpoint(tmp_path / 'a')
    assert not any(k.startswith('module.') for k in ck['model']) and ck['step'] == 16
    train.model_from_checkpoint(ck)
    a0, a1 = _logs(tmp_path / 'log_a')
    assert (a0['world'], a1['world'], a0['rank'], a1['rank']) == (2, 2, 0, 1)
    assert len(a0['batches']) == len(a1['batches']) == 16 and not set(a0['batches']) & set(a1['batches'])  # different data
    assert a0['weights'] == a1['weights'] and a0['ema'] == a1['ema']                                      # one model
    # 2. the same run cut mid-epoch (a checkpoint at step CUT), then resumed by ddpm_train in 2 processes
    (tmp_path / 'cut.py').write_text(CUT_SCRIPT)
    _run(_torchrun(str(tmp_path / 'cut.py'), str(tmp_path / 'b' / 'checkpoint.pt')), tmp_path / 'log_cut', tmp_path)
    assert train.load_checkpoint(tmp_path / 'b')['step'] == CUT
    _run(_torchrun(exe, '--out', str(tmp_path / 'b'), '--resume', *FLAGS), tmp_path / 'log_b', tmp_path)
    b0, b1 = _logs(tmp_path / 'log_b')
    assert b0['batches'] == a0['batches'][CUT:] and b1['batches'] == a1['batches'][CUT:]  # the same batches and noise
    assert b0['weights'] == b1['weights'] == a0['weights'] and b0['ema'] == a0['ema']     # exactly where the whole run ended
    cb = train.load_checkpoint(tmp_path / 'b')
    assert all(torch.equal(cb['model'][k], ck['model'][k]) for k in ck['model'])


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which('ddpm_train') is None, reason='needs torch.distributed and ddpm_train')
@pytest.mark.slow
def test_two_cpu_processes_share_one_time_budget(tmp_path):
    "--minutes under 2 processes: rank 0's first estimate and its re-plan are broadcast, so both ranks run the same steps."
    flags = ['--channels', '8,16', '--bs', '32', '--n_train', '256', '--n_steps', '50', '--samples', '0']  # the budget sets the steps
    r = _run(_torchrun(shutil.which('ddpm_train'), '--out', str(tmp_path / 'm'), '--minutes', '0.15', *flags), tmp_path / 'log_m', tmp_path)
    assert 'steps in all' in r.stdout, r.stdout   # the re-plan happened (and rank 0 said so)
    m0, m1 = _logs(tmp_path / 'log_m')
    ck = train.load_checkpoint(tmp_path / 'm')
    assert len(m0['batches']) == len(m1['batches']) == ck['step'] == ck['config']['total_steps']
    assert m0['weights'] == m1['weights']
