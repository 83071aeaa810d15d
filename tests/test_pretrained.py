"The shipped reference model: small, versioned, described by its JSON, loadable, and good enough to recognise."
import hashlib, json

import torch

import pytest

from ddpm_from_scratch.train import PRETRAINED, TrainConfig, build_schedule, load_checkpoint, load_model, load_pretrained, pretrained_path, shipped_models
from ddpm_from_scratch.classifier import accuracy, load_classifier
from ddpm_from_scratch.guidance import guided_sample
from ddpm_from_scratch.unet import UNet


def facts(name=PRETRAINED): return json.loads(pretrained_path(name).with_suffix('.json').read_text())


def test_the_pretrained_model_is_one_of_the_shipped_ones():
    assert PRETRAINED in shipped_models() and shipped_models()[0] == 'ddpm_fashion_v1'


@pytest.mark.parametrize('name', shipped_models())
def test_asset_is_small_versioned_float16_and_described(name):
    p = pretrained_path(name)
    assert p.name == f'{name}.pt' and p.stat().st_size <= 10 * 2**20
    f = facts(name)
    assert f['version'] == name.rsplit('_', 1)[-1] and f['file'] == p.name
    assert f['sha256'] == hashlib.sha256(p.read_bytes()).hexdigest()    # the JSON describes exactly this file
    ck = load_checkpoint(p)
    assert all(v.dtype == torch.float16 for v in ck['model'].values()) and ck['step'] == f['steps']
    assert TrainConfig.from_dict(ck['config']) == TrainConfig.from_dict(f['config'])
    assert f['train_cpu_hours'] > 0 and f['scores']['n'] >= 512 and f['scores']['rows']
    model, cfg = load_model(name)   # by name, as `sample_ddpm --ckpt NAME` does
    assert cfg == TrainConfig.from_dict(f['config']) and sum(p.numel() for p in model.parameters()) == f['params']


def test_a_local_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    "A folder of the user's that happens to share a shipped model's name is what `--ckpt` means."
    monkeypatch.chdir(tmp_path)
    (tmp_path / PRETRAINED).mkdir()
    with pytest.raises(Exception, match='not found|checkpoint'): load_model(PRETRAINED)


def test_load_pretrained_builds_the_class_conditional_unet():
    model, cfg = load_pretrained()
    assert isinstance(model, UNet) and not model.training and model.n_classes == cfg.n_classes == 10
    assert sum(p.numel() for p in model.parameters()) == facts()['params']
    assert all(p.dtype == torch.float32 for p in model.parameters())   # float16 on disk, float32 to compute


def test_guided_samples_are_recognised_by_the_classifier():
    "A broken or mis-loaded model fails this: guided samples (w=3) must mostly be the asked-for class."
    model, cfg = load_pretrained()
    classes = torch.arange(10).repeat(3)
    imgs = guided_sample(model, build_schedule(cfg), classes, w=3., steps=20, progress=False,
                         generator=torch.Generator().manual_seed(0))
    acc = accuracy(load_classifier(), imgs, classes)
    assert acc >= 0.6, acc
