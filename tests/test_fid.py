import math, os, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ddpm_from_scratch.fid as fid_mod
from ddpm_from_scratch.data import fashion_tensors
from ddpm_from_scratch.fid import (ImageEval, check_images, extract_features, feature_stats, frechet_distance,
                                   kid_score, mmd2_unbiased, poly_kernel, sqrtm_psd, trace_sqrt_product,
                                   evaluate, weights_fingerprint)


class RandomFeatures(nn.Module):
    "A fixed random conv net with `.features` (N, dim): a fast stand-in for the trained classifier."
    def __init__(self, dim=32, seed=0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(32, dim, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            for m in self.body:
                if isinstance(m, nn.Conv2d): nn.init.kaiming_normal_(m.weight); nn.init.zeros_(m.bias)
        self.n_calls = 0
    def features(self, x):
        self.n_calls += 1
        return self.body(x)
    def forward(self, x): return self.features(x)


@pytest.fixture(scope='module')
def model(): return RandomFeatures()

@pytest.fixture(scope='module')
def xtrain(): return fashion_tensors('train')[0][:600]

@pytest.fixture(scope='module')
def xtest(): return fashion_tensors('test')[0][:200]

@pytest.fixture(scope='module')
def ie(model, xtrain): return ImageEval(model, xtrain, bs=256)

def noise(n, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1

def fid_numpy(f1, f2):
    "Independent route: tr sqrt(S1 S2) from the eigenvalues of the non-symmetric product (NumPy eigvals)."
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.linalg.eigvals(c1 @ c2)
    return (((a.mean(0) - b.mean(0))**2).sum() + np.trace(c1) + np.trace(c2)
            - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


# --- The Frechet distance --------------------------------------------------------------------------------

def test_sqrtm_psd_squares_back():
    a = torch.randn(20, 8, dtype=torch.float64); s = a.T @ a / 20
    r = sqrtm_psd(s)
    assert torch.allclose(r @ r, s, atol=1e-12) and torch.allclose(r, r.T)
    low = a[:5].T @ a[:5]                             # rank 5 of 8: eigh gives tiny negative eigenvalues, clamped
    r = sqrtm_psd(low)
    assert torch.isfinite(r).all() and torch.allclose(r @ r, low, atol=1e-10)

def test_frechet_closed_form_diagonal():
    "Diagonal covariances: d^2 = sum (mu1-mu2)^2 + (s1-s2)^2."
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(6, generator=g, dtype=torch.float64) + .1, torch.rand(6, generator=g, dtype=torch.float64) + .1
    expected = ((m1 - m2)**2 + (s1 - s2)**2).sum().item()
    assert math.isclose(frechet_distance(m1, torch.diag(s1**2), m2, torch.diag(s2**2)), expected, rel_tol=1e-10)
    assert frechet_distance(m1, torch.diag(s1**2), m2, torch.diag(s2**2)) > 0.1  # not trivially 0

def test_frechet_agrees_with_independent_formula(model, xtrain, xtest):
    f1, f2 = extract_features(model, xtrain), extract_features(model, noise(200))
    f3 = extract_features(model, xtest)
    for a, b in ((f1, f2), (f1, f3)):
        ours = frechet_distance(*feature_stats(a), *feature_stats(b))
        ref = fid_numpy(a.numpy(), b.numpy())
        assert ours > 0 and math.isclose(ours, ref, rel_tol=1e-3), (ours, ref)

def test_trace_sqrt_product_is_symmetric_in_its_arguments():
    a, b = torch.randn(40, 10, dtype=torch.float64), torch.randn(40, 10, dtype=torch.float64) * 2
    s1, s2 = a.T @ a, b.T @ b
    assert math.isclose(trace_sqrt_product(s1, s2).item(), trace_sqrt_product(s2, s1).item(), rel_tol=1e-9)

def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='one D'):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))

def test_feature_stats_match_torch_cov():
    f = torch.randn(50, 7)
    mu, cov = feature_stats(f)
    assert mu.dtype == cov.dtype == torch.float64 and cov.shape == (7, 7)
    assert torch.allclose(cov, torch.cov(f.double().T)) and torch.allclose(mu, f.double().mean(0))
    with pytest.raises(ValueError, match='N >= 2'): feature_stats(torch.randn(1, 7))


# --- FID on images -----------------------------------------------------------------------------------------

def test_fid_of_a_set_against_itself_is_zero(model, xtrain, ie):
    assert abs(ie.fid(xtrain)) < 1e-3
    assert abs(ie.fid(xtrain)) < 1e-6 * ie.fid(noise(200))

def test_fid_real_small_noise_large(ie, xtest):
    real, rand = ie.fid(xtest), ie.fid(noise(200))
    assert real < 0.01 and rand > 0.3 and rand > 100 * real, (real, rand)

def test_fid_invariant_to_28_vs_32(ie):
    x28 = fashion_tensors('test', pad=0)[0][:100]
    x32 = fashion_tensors('test')[0][:100]
    assert ie.fid(x28) == ie.fid(x32)

def test_batch_size_does_not_change_features(model, xtest):
    assert torch.allclose(extract_features(model, xtest[:64], bs=7), extract_features(model, xtest[:64], bs=64), atol=1e-6)

def test_features_restore_training_mode(model, xtest):
    model.train()
    extract_features(model, xtest[:4])
    assert model.training
    model.eval()

def test_plain_callable_feature_model(xtest):
    f = extract_features(lambda x: x.mean((2, 3)), xtest[:10])      # any callable returning (N, D)
    assert f.shape == (10, 1) and weights_fingerprint(lambda x: x) is None


# --- KID ---------------------------------------------------------------------------------------------------

def test_poly_kernel_formula():
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(poly_kernel(x, y)[1, 2], (x[1] @ y[2] / 4 + 1)**3)

def test_mmd2_unbiased_matches_loops():
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64) + .5
    k = lambda a, b: (a @ b / 3 + 1)**3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert torch.allclose(mmd2_unbiased(x, y), xx + yy - 2 * xy)
    xs, ys = torch.stack([x, x + 1]), torch.stack([y, y * 2])                # a batch of set pairs
    assert torch.allclose(mmd2_unbiased(xs, ys), torch.stack([mmd2_unbiased(x, y), mmd2_unbiased(x + 1, y * 2)]))

def test_mmd2_is_unbiased():
    "Same distribution: the mean over many draws is within 4 standard errors of 0 (the biased one is far off)."
    g = torch.Generator().manual_seed(0)
    u = torch.stack([mmd2_unbiased(torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g))
                     for _ in range(1000)])
    se = u.std() / len(u)**.5
    assert abs(u.mean()) < 4 * se, (u.mean(), se)

def test_kid_identical_and_different(ie, xtrain, xtest):
    same = ie.kid(xtrain)                     # identical sets (subsets drawn independently)
    real = ie.kid(xtest)
    rand = ie.kid(noise(200))
    assert abs(same) < 1e-3 * rand and abs(real) < 1e-2 * rand and rand > 0.05, (same, real, rand)
    f = torch.randn(200, 8)
    assert abs(kid_score(f, f)[0]) < 0.05 * kid_score(f, f + 1)[0]

def test_kid_is_reproducible_and_reports_spread(ie, xtest):
    s1, s2 = ie.scores(xtest[:100]), ie.scores(xtest[:100])
    assert s1 == s2 and s1['n'] == 100 and s1['kid_std'] > 0
    assert s1['fid'] == ie.fid(xtest[:100]) and s1['kid'] == ie.kid(xtest[:100])


# --- Input validation --------------------------------------------------------------------------------------

@pytest.mark.parametrize('bad, match', [
    (torch.zeros(4, 32, 32), r'shape \(N, 1, 32, 32\).*x\[:, None\]'),
    (torch.zeros(4, 32, 32, 1), 'channels-last'),
    (torch.zeros(4, 3, 32, 32), '1-channel'),
    (torch.zeros(4, 1, 64, 64), r'got \(4, 1, 64, 64\)'),
    (torch.zeros(0, 1, 32, 32), 'empty'),
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), r'dtype torch.uint8.*\[0, 255\].*to_model_range.*different ranges'),
    (torch.full((4, 1, 32, 32), 255.), r'\[-1, 1\].*\[0, 255\].*x/127.5 - 1.*once wrong'),
    (torch.full((4, 1, 32, 32), -1.5), r'got \[-1.5, -1.5\].*clamp'),
    (torch.full((4, 1, 32, 32), float('nan')), 'NaN'),
])
def test_validation_errors(ie, bad, match):
    with pytest.raises(ValueError, match=match): check_images(bad)
    with pytest.raises(ValueError, match=match): ie.fid(bad)

def test_validation_type_error():
    with pytest.raises(TypeError, match='torch.Tensor'): check_images([[0.]])

def test_validation_accepts_and_pads():
    x = torch.full((2, 1, 28, 28), 1 + 5e-4)                           # tiny overshoot: accepted, clamped
    y = check_images(x)
    assert y.shape == (2, 1, 32, 32) and y.max() == 1 and (y[:, :, :2] == -1).all() and (y[..., -2:] == -1).all()
    assert check_images(np.zeros((2, 1, 32, 32), np.float32)).dtype == torch.float32

def test_zero_one_scale_warns_but_small_batches_and_real_images_do_not():
    x = fashion_tensors('test')[0][:128]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_images(x); check_images((x[:8] + 1) / 2)                  # real images; a small [0,1] batch
    with pytest.warns(UserWarning, match=r'\[0, 1\] instead of \[-1, 1\]') as rec: check_images((x + 1) / 2)
    assert rec[0].filename == __file__                                   # points at the caller's line


# --- The cache ---------------------------------------------------------------------------------------------

def test_cache_written_once_and_reused(tmp_path, xtrain):
    m = RandomFeatures(seed=3)
    path = tmp_path / 'sub' / 'stats.pt'
    a = ImageEval(m, xtrain[:300], cache=path)
    calls = m.n_calls
    assert path.exists() and not a.from_cache and calls > 0
    mtime = path.stat().st_mtime_ns
    def never(): raise AssertionError('the real images must not be read when the cache is valid')
    b = ImageEval(m, never, cache=path)
    assert b.from_cache and m.n_calls == calls and path.stat().st_mtime_ns == mtime
    assert torch.equal(a.mu, b.mu) and torch.equal(a.cov, b.cov) and torch.equal(a.real_feats, b.real_feats)
    assert b.fid(xtrain[:300]) == a.fid(xtrain[:300])
    assert [p.name for p in path.parent.iterdir()] == ['stats.pt']          # no temporary files left behind

def test_cache_of_other_weights_is_recomputed(tmp_path, xtrain):
    path = tmp_path / 'stats.pt'
    a = ImageEval(RandomFeatures(seed=1), xtrain[:200], cache=path)
    with pytest.warns(UserWarning, match='other feature-model weights'):
        b = ImageEval(RandomFeatures(seed=2), xtrain[:200], cache=path)
    assert not b.from_cache and not torch.equal(a.mu, b.mu)
    assert torch.load(path, weights_only=True)['fingerprint'] == b.fingerprint

def test_cache_needs_images_or_file(tmp_path, model):
    with pytest.raises(ValueError, match='real images'): ImageEval(model, None, cache=tmp_path / 'nope.pt')

def test_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, model, xtrain):
    "An interrupted cache write (through `data.atomic_write`) leaves neither a half file nor a temporary one."
    def boom(obj, f): Path(f).write_bytes(b'half'); raise KeyboardInterrupt
    monkeypatch.setattr(fid_mod.torch, 'save', boom)
    with pytest.raises(KeyboardInterrupt): ImageEval(model, xtrain[:50], cache=tmp_path / 'stats.pt')
    assert list(tmp_path.iterdir()) == []


class StubEval:
    "Scores that are simple functions of the images, so `evaluate`'s bookkeeping can be checked exactly."
    def __init__(self): self.seen = []
    def scores(self, x):
        self.seen.append(x.clone())
        return dict(fid=float(x.mean()) + 2., kid=float(x.std()), kid_std=0.5, n=len(x))


def test_evaluate_scores_samples_beside_a_real_floor():
    ev, x = StubEval(), -torch.rand(6, 1, 32, 32)
    r = evaluate(x, evaluator=ev)
    real = fashion_tensors('train')[0][:6]
    assert torch.equal(ev.seen[0], x) and torch.equal(ev.seen[1], real)   # the floor: as many real training images
    assert r['fid'] == pytest.approx(float(x.mean()) + 2) and r['floor_fid'] == pytest.approx(float(real.mean()) + 2)
    assert r['n'] == r['n_real'] == 6 and {'kid', 'kid_std', 'floor_kid', 'floor_kid_std'} <= set(r)
    assert evaluate(x, n_real=3, evaluator=ev)['n_real'] == 3
    mine = fashion_tensors('test')[0][:4]
    evaluate(x, evaluator=ev, real=mine); assert torch.equal(ev.seen[-1], mine)
    assert 'floor_fid' not in evaluate(x, n_real=0, evaluator=ev)

def test_fashion_mnist_constructor_caches_per_weights_split_and_n(tmp_path, monkeypatch):
    m = RandomFeatures(seed=4)
    a = ImageEval.fashion_mnist('test', n=300, cache_dir=tmp_path, feature_model=m)
    calls = m.n_calls
    b = ImageEval.fashion_mnist('test', n=300, cache_dir=tmp_path, feature_model=m)
    assert b.from_cache and m.n_calls == calls and torch.equal(a.cov, b.cov) and a.n_real == 300
    ImageEval.fashion_mnist('test', n=200, cache_dir=tmp_path, feature_model=m)
    names = sorted(p.name for p in (tmp_path / 'fid_stats').iterdir())
    assert names == [f'fashion_test_n200_k10000_{a.fingerprint[:16]}.pt', f'fashion_test_n300_k10000_{a.fingerprint[:16]}.pt']
    monkeypatch.setenv('DDPM_CACHE_DIR', str(tmp_path / 'env'))
    ImageEval.fashion_mnist('test', n=100, feature_model=m)
    assert (tmp_path / 'env' / 'fid_stats').is_dir()
    with pytest.raises(ValueError, match='split'): ImageEval.fashion_mnist('valid', feature_model=m, cache_dir=False)
    with pytest.raises(ValueError, match='has only 10000'):
        ImageEval.fashion_mnist('test', n=20_000, feature_model=m, cache_dir=False)

def test_kid_n_keeps_a_subset(xtrain, model):
    e = ImageEval(model, xtrain[:400], kid_n=100)
    assert e.n_real == 400 and e.real_feats.shape == (100, 32)


# --- With the shipped classifier, when it exists ------------------------------------------------------------

def test_shipped_classifier_real_vs_noise(tmp_path):
    clf = pytest.importorskip('ddpm_from_scratch.classifier')
    if not clf.classifier_paths()[0].exists(): pytest.skip('the classifier weights are not shipped yet')
    m = clf.load_classifier(device='cpu')
    e = ImageEval.fashion_mnist('train', n=1000, cache_dir=tmp_path, feature_model=m)
    real, rand = e.fid(fashion_tensors('test')[0][:500]), e.fid(noise(500))
    assert rand > 10 * real, (real, rand)
