"""FID of one checkpoint under several sampler settings, with the spread at a smaller N for free.

    python bench/bench_sampling_settings.py --ckpt runs/ddpm [--n 2048] [--chunk 512] [--json out.json] \\
        "steps=50,eta=1,clip=0" "steps=50,eta=1,clip=1" "steps=50,eta=0,clip=0" "steps=50,eta=0,clip=1"

Every setting samples the same --n images' worth of noise (`ddim.generate`, batches of 64, one seeded generator), so
settings differ only in the sampler. Each is scored at N=--n, and each disjoint block of --chunk images is scored
on its own: four FIDs at N=512 from one run at N=2048 show how much a 512-image FID moves with the noise alone.
The first block is what `ddpm_eval --n 512` with the same setting reports. CPU time is this process's.
"""
import argparse, json, sys, time


def parse_setting(s:str)->dict:
    "'steps=50,eta=1,clip=0' -> dict(steps=50, eta=1.0, clip=False)"
    kinds = dict(steps=int, eta=float, clip=lambda v: bool(int(v)), spacing=str)
    out = {}
    for part in s.split(','):
        k, v = part.split('=')
        if k not in kinds: sys.exit(f"unknown option {k!r}: use {sorted(kinds)}")
        out[k] = kinds[k](v)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('settings', nargs='+', help="DDIM options, e.g. steps=50,eta=1,clip=0")
    p.add_argument('--ckpt', required=True, help="checkpoint file or folder (ddpm_train's, or a diffusers one from the budget sweep), or 'pretrained'")
    p.add_argument('--n', type=int, default=2048)
    p.add_argument('--chunk', type=int, default=512)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    from ddpm_from_scratch.train import load_model, build_schedule
    from ddpm_from_scratch.experiments import load_bench_model
    from ddpm_from_scratch.data import fashion_tensors
    from ddpm_from_scratch.ddim import generate
    from ddpm_from_scratch.fid import ImageEval
    if a.ckpt == 'pretrained': model, cfg = load_model(a.ckpt); schedule = build_schedule(cfg)
    else: bm = load_bench_model(a.ckpt); model, schedule = bm.model, bm.schedule   # ddpm_train's or a diffusers UNet2DModel
    ev = ImageEval.fashion_mnist('test')
    real = fashion_tensors('train')[0]
    res = dict(ckpt=a.ckpt, n=a.n, chunk=a.chunk, seed=a.seed, floor=ev.scores(real[:a.n])['fid'],
               floor_chunk=ev.scores(real[:a.chunk])['fid'], rows=[])
    print(f"real-data floor: FID@{a.n} {res['floor']:.2f}, FID@{a.chunk} {res['floor_chunk']:.2f}")
    for s in a.settings:
        kw = parse_setting(s)
        t0 = time.process_time()
        imgs = generate(model, schedule, a.n, 'ddim', seed=a.seed, progress=False, **kw)
        r = dict(setting=s, fid=ev.scores(imgs)['fid'], cpu_seconds=time.process_time() - t0,
                 chunk_fids=[ev.scores(imgs[i:i + a.chunk])['fid'] for i in range(0, a.n - a.chunk + 1, a.chunk)])
        print(f"{s:>28}  FID@{a.n} {r['fid']:6.2f}   FID@{a.chunk} " + ' '.join(f'{f:5.2f}' for f in r['chunk_fids'])
              + f"   {r['cpu_seconds']:.0f} CPU-s", flush=True)
        res['rows'].append(r)
        if a.json:
            with open(a.json, 'w') as f: json.dump(res, f, indent=1)


if __name__ == '__main__': main()
