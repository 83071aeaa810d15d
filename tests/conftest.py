"Shared pytest fixtures: one torch thread for every test, and the small models several test files train or sample."
import pytest
import torch

from ddpm_from_scratch.unet import UNet


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    "One torch thread: the tests use tiny tensors, and on a busy 2-core machine two threads per process can be ten times slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_tiny_unet(seed:int=0, randomise:bool=False, **kwargs)->UNet:
    "A 16x16 two-level `UNet` (16, 32) without attention; `randomise` refills its zero-initialised layers so every input matters."
    torch.manual_seed(seed)
    cfg = dict(channels=(16, 32), n_res=1, img_size=16, attn_res=())
    m = UNet(**{**cfg, **kwargs})
    if randomise:
        with torch.no_grad():
            for p in m.parameters():
                if p.abs().max() == 0: p.normal_(0, 0.05)
    return m


@pytest.fixture
def tiny_unet():
    "A factory for `make_tiny_unet(seed=0, randomise=False, **UNet kwargs)`."
    return make_tiny_unet


import ddpm_from_scratch.ode  # registers the sigma samplers (euler, heun, dpmpp_2m, dpmpp_2m_sde) in ddim.SAMPLERS
from ddpm_from_scratch.ddim import SAMPLERS  # here, not at the top: only the sampler fixture below needs it


@pytest.fixture(params=list(SAMPLERS))
def sampler(request):
    "Each registered sampler in turn, as `(name, function)`: a test using it runs once per entry of `ddim.SAMPLERS`."
    return request.param, SAMPLERS[request.param]
