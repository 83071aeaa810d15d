"""Training step time of the DDPM U-Net, float32 vs mixed precision (the `MixedPrecision` callback), in one run.

    python bench/bench_mixed_precision.py [--steps 22] [--bs 128] [--channels 32 64 128 128] [--rounds 3] [--device cuda]

Runs on CUDA when a GPU is present, otherwise on the CPU (there the default is a smaller batch and U-Net and
one thread, to stay short). Each setting trains a fresh `fashion_unet` with the Learner + `DDPMCB` for `--steps`
batches and the median time per batch after two warm-up batches is taken (with `torch.cuda.synchronize` on a
GPU); the settings alternate for `--rounds` rounds, so a change in a shared machine's load hits all of them, and
the ratio fp32 / mixed is taken within each round and its median reported (above 1: mixed precision is faster). Settings: fp32, bfloat16 autocast, and
on CUDA also float16 autocast with a gradient scaler."""
import argparse, platform, statistics, sys, time

import torch
import torch.nn.functional as F

from ddpm_from_scratch.data import DataLoaders, default_device, fashion_tensors, set_seed
from ddpm_from_scratch.ddpm import DDPMCB, adam_opt, fashion_unet
from ddpm_from_scratch.init import init_ddpm
from ddpm_from_scratch.learner import Callback, DeviceCB, Learner
from ddpm_from_scratch.mixed import MixedPrecision


class BatchTimer(Callback):
    "Wall time of each training batch, synchronising the device so queued GPU work is counted."
    order = 100
    def _sync(self, learn):
        if self.dev.type == 'cuda': torch.cuda.synchronize(self.dev)
    def before_fit(self, learn): self.dev, self.times = next(learn.model.parameters()).device, []
    def before_batch(self, learn): self._sync(learn); self.t0 = time.perf_counter()
    def after_batch(self, learn):
        if learn.training: self._sync(learn); self.times.append(time.perf_counter() - self.t0)


def step_time(mp, dls, channels, device, n_warm=2):
    "Median seconds per training batch; `mp` is None (fp32) or a `MixedPrecision` callback."
    set_seed(0)
    model = init_ddpm(fashion_unet(tuple(channels)))
    timer = BatchTimer()
    cbs = [DDPMCB(), DeviceCB(device), timer] + ([mp] if mp is not None else [])
    learn = Learner(model, dls, F.mse_loss, lr=1e-3, cbs=cbs, opt_func=adam_opt())
    learn.fit(1, valid=False)
    return statistics.median(timer.times[n_warm:]), learn.loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=None, help='default: cuda -> mps -> cpu')
    p.add_argument('--steps', type=int, default=None, help='batches per run, 2 of them warm-up (default 22 on GPU, 6 on CPU)')
    p.add_argument('--bs', type=int, default=None, help='batch size (default 128 on GPU, 32 on CPU)')
    p.add_argument('--rounds', type=int, default=3, help='alternating rounds of all settings; medians are reported')
    p.add_argument('--channels', type=int, nargs='+', default=None, help='U-Net widths (default 32 64 128 128 on GPU, 16 32 64 64 on CPU)')
    args = p.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    gpu = device.type != 'cpu'
    if not gpu: torch.set_num_threads(1)
    steps = args.steps or (22 if gpu else 6)
    bs = args.bs or (128 if gpu else 32)
    channels = args.channels or ([32, 64, 128, 128] if gpu else [16, 32, 64, 64])
    xs = fashion_tensors('train')[0][:bs * steps]
    dls = DataLoaders.from_tensors((xs,), (xs[:bs],), bs)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()} CPU, 1 thread'
    print(f'device {device} ({name}), torch {torch.__version__}, U-Net widths {tuple(channels)}, batch {bs}, '
          f'{len(dls.train) - 2} timed batches')
    settings = {'fp32': None, 'bf16 autocast': MixedPrecision('bf16')}
    if device.type == 'cuda':
        if not torch.cuda.is_bf16_supported(): del settings['bf16 autocast']
        settings['fp16 autocast + GradScaler'] = MixedPrecision('fp16')
    times = {k: [] for k in settings}
    for r in range(args.rounds):  # alternate the settings so a change in the machine's load hits all of them
        for k, mp in settings.items():
            t, loss = step_time(mp, dls, channels, device)
            times[k].append(t)
            print(f'round {r}  {k:28} {t * 1e3:8.1f} ms/batch   (last loss {loss:.5f})', flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in settings: print(f'{k:28} median {med[k] * 1e3:8.1f} ms/batch')
    for k in list(settings)[1:]:
        ratios = [a / b for a, b in zip(times['fp32'], times[k])]
        print(f'ratio fp32 / {k}: {statistics.median(ratios):.2f}x (median over rounds; per round: '
              f'{" ".join(f"{r:.2f}" for r in ratios)})')

if __name__ == '__main__': sys.exit(main())
