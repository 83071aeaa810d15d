import multiprocessing as mp
import pickle, time
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ddpm_from_scratch.data import (FASHION_LABELS, DataLoaders, collate_dict, fashion_dls, fashion_tensors,
                                    fashion_transform, load_fashion_mnist, load_hub_dataset, to_device)


@pytest.fixture(scope='module')
def dsd(): return load_fashion_mnist()


def test_schema_and_sizes(dsd):
    assert {k: len(v) for k, v in dsd.items()} == {'train': 60_000, 'test': 10_000}
    feats = dsd['train'].features
    assert type(feats['image']).__name__ == 'Image'
    assert feats['label'].names == FASHION_LABELS
    item = dsd['test'][123]
    assert item['image'].mode == 'L' and item['image'].size == (28, 28)
    assert isinstance(item['label'], int)


def test_per_class_counts(dsd):
    for split, n in (('train', 6_000), ('test', 1_000)):
        counts = np.bincount(np.array(dsd[split]['label']), minlength=10)
        assert (counts == n).all(), (split, counts)


def test_loads_fast():
    t0 = time.perf_counter(); load_fashion_mnist()
    assert time.perf_counter() - t0 < 3


def test_fast_path_matches_transform_path(dsd):
    x, y = fashion_tensors('test')
    assert x.shape == (10_000, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()   # padding is background
    tds = dsd.with_transform(fashion_transform)
    for i in (0, 77, 9_999):
        assert torch.equal(tds['test'][i]['image'], x[i])
        assert tds['test'][i]['label'] == y[i]


def test_transform_and_collate_pickle(dsd):
    tds = dsd.with_transform(fashion_transform)
    f = collate_dict(tds['train'])
    for o in (fashion_transform, f, tds['train']): pickle.loads(pickle.dumps(o))


@pytest.mark.slow
def test_dataloader_workers_under_spawn(dsd):
    "The Windows/macOS failure from the forum: workers started with `spawn` must be able to pickle everything."
    tds = dsd.with_transform(fashion_transform)
    dls = DataLoaders.from_dd(tds, 64, num_workers=2, multiprocessing_context=mp.get_context('spawn'))
    it = iter(dls.valid)
    for _ in range(3):
        xb, yb = next(it)
        assert xb.shape == (64, 1, 32, 32) and yb.shape == (64,)
        assert xb.min() >= -1 and xb.max() <= 1


def test_fast_dataloaders_cover_split_once():
    dls = fashion_dls(1000)
    ys = torch.cat([yb for _, yb in dls.valid])
    assert torch.equal(ys, fashion_tensors('test')[1])          # valid: in order, every item once
    xs, ys = zip(*[(xb, yb) for xb, yb in dls.train])
    assert sum(len(o) for o in ys) == 60_000
    assert not torch.equal(torch.cat(ys)[:1000], fashion_tensors('train')[1][:1000])  # train is shuffled


def test_hub_name_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"could not be reached.*load_fashion_mnist"):
        load_hub_dataset('fashion_mnist', endpoint='http://127.0.0.1:9', timeout=2)
    assert time.perf_counter() - t0 < 10
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(ConnectionError, match='HF_HUB_OFFLINE'): load_hub_dataset('fashion_mnist')


def test_to_device_nested():
    b = to_device((torch.zeros(1), {'a': [torch.ones(2)]}), torch.device('cpu'))
    assert isinstance(b, tuple) and isinstance(b[1]['a'], list) and b[1]['a'][0].device.type == 'cpu'


def test_to_device_moves_every_tensor():
    "On the 'meta' device a `to_device` that did nothing would leave CPU tensors behind (CPU -> CPU proves nothing)."
    P = namedtuple('P', 'x n')
    batch = {'a': (torch.zeros(2), [torch.ones(1), P(torch.ones(3), 5)]), 'b': 3, 's': 'text'}
    out = to_device(batch, 'meta')
    assert type(out) is dict and type(out['a']) is tuple and type(out['a'][1]) is list and type(out['a'][1][1]) is P
    tensors = [out['a'][0], out['a'][1][0], out['a'][1][1].x]
    assert all(t.device.type == 'meta' for t in tensors)
    assert [t.shape for t in tensors] == [(2,), (1,), (3,)]
    assert out['a'][1][1].n == 5 and out['b'] == 3 and out['s'] == 'text'       # non-tensors untouched
    assert batch['a'][0].device.type == 'cpu'                                    # the input is not modified
    assert to_device(torch.zeros(2), torch.device('meta')).device.type == 'meta'


def test_default_device_warns_on_mps_and_obeys_the_override(monkeypatch):
    import warnings
    from ddpm_from_scratch import data
    monkeypatch.delenv('DDPM_DEVICE', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: True)
    with pytest.warns(UserWarning, match='DDPM_DEVICE=cpu'): assert data.default_device().type == 'mps'
    monkeypatch.setenv('DDPM_DEVICE', 'cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert data.default_device().type == 'cpu'   # the way out: no MPS, no warning


def test_show_beside_puts_real_over_generated():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ddpm_from_scratch.data import show_beside
    fake = torch.full((5, 1, 32, 32), 0.5)
    fig = show_beside(fake, n=4)
    axs = fig.axes
    assert len(axs) == 8
    assert (axs[4].images[0].get_array() == 0.5).all()        # bottom row: the samples
    assert not (axs[0].images[0].get_array() == 0.5).all()    # top row: real images
    assert [t.get_text() for t in axs[0].texts] == ['real (test split)']
    fig2 = show_beside(fake[:2], real=-torch.ones(3, 1, 32, 32))  # n shrinks to what both rows have
    assert len(fig2.axes) == 4
    with pytest.raises(ValueError): show_beside(fake[:0])
    plt.close('all')
