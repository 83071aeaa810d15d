"""Train a small denoiser on Fashion-MNIST with `AccelerateCB` in two CPU processes and check the run.

    python bench/accelerate_two_cpu.py [--n_train 1024] [--epochs 2] [--num_processes 2]

`accelerate.notebook_launcher` forks the processes and sets up `torch.distributed` (gloo backend on CPU); the
same `train` function runs unchanged under `accelerate launch` / `torchrun` on several GPUs. Each process
writes what it saw to a JSON file; the parent then checks that every rank ran, that they saw different batches
(the data was sharded), that the loss went down, and that all copies of the model ended identical (the
gradients were averaged). Prints a summary and exits non-zero if a check fails."""
import argparse, json, os, socket, sys, tempfile, time


def train(out_dir:str, n_train:int, epochs:int, bs:int, lr:float):
    "One process's work: the Learner with AccelerateCB on a small conv denoiser (predict the noise of x+noise)."
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from ddpm_from_scratch.data import DataLoaders, fashion_tensors
    from ddpm_from_scratch.learner import Callback, Learner
    from ddpm_from_scratch.mixed import AccelerateCB

    class Record(Callback):
        order = 50
        def before_fit(self, learn): self.losses, self.first_batch = [], None
        def after_batch(self, learn):
            if not learn.training: return
            self.losses.append(learn.loss.item())
            if self.first_batch is None: self.first_batch = learn.batch[0].double().sum().item()

    x = fashion_tensors('test')[0][:n_train]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x.shape, generator=g)
    x_noisy = (x + eps) / 2 ** 0.5
    dls = DataLoaders.from_tensors((x_noisy, eps), (x_noisy[:bs], eps[:bs]), bs)
    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1), nn.SiLU(),
                          nn.Conv2d(16, 1, 3, padding=1))
    acb, rec = AccelerateCB(cpu=True), Record()
    learn = Learner(model, dls, lr=lr, cbs=[acb, rec], opt_func=torch.optim.Adam)
    learn.fit(epochs, valid=False)
    acc = acb.acc
    checksum = sum(p.double().sum().item() for p in acb.unwrap(learn).parameters())
    res = dict(rank=acc.process_index, world_size=acc.num_processes, distributed_type=str(acc.distributed_type),
               n_batches=len(learn.dls.train), losses=rec.losses, first_batch=rec.first_batch, checksum=checksum)
    with open(os.path.join(out_dir, f'rank{acc.process_index}.json'), 'w') as f: json.dump(res, f)


def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def check(results:list, num_processes:int)->list:
    "The list of failed checks (empty if all passed)."
    fails = []
    ranks = sorted(r['rank'] for r in results)
    if ranks != list(range(num_processes)): fails.append(f'expected ranks {list(range(num_processes))}, got {ranks}')
    if any(r['world_size'] != num_processes for r in results): fails.append('a process saw the wrong world size')
    if len({r['first_batch'] for r in results}) != len(results): fails.append('processes saw the same first batch: data not sharded')
    for r in results:
        l = r['losses']; k = max(1, len(l) // 4)
        if not sum(l[-k:]) / k < 0.8 * sum(l[:k]) / k: fails.append(f"rank {r['rank']}: loss did not go down ({l[0]:.3f} -> {l[-1]:.3f})")
    if len({round(r['checksum'], 9) for r in results}) != 1: fails.append('the model copies differ: gradients were not averaged')
    return fails


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n_train', type=int, default=1024)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--num_processes', type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    from accelerate import notebook_launcher
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        notebook_launcher(train, args=(d, args.n_train, args.epochs, args.bs, args.lr),
                          num_processes=args.num_processes, use_port=str(free_port()))
        secs = time.time() - t0
        results = [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith('.json')]
    for r in results:
        l = r['losses']
        print(f"rank {r['rank']}/{r['world_size']} ({r['distributed_type']}): {len(l)} batches, "
              f"loss {l[0]:.3f} -> {l[-1]:.3f}, weight checksum {r['checksum']:.9f}")
    fails = check(results, args.num_processes)
    print(f'{args.num_processes} processes, {secs:.1f} s including start-up: ' + ('all checks passed' if not fails else 'FAILED: ' + '; '.join(fails)))
    return 1 if fails else 0


if __name__ == '__main__': sys.exit(main())
