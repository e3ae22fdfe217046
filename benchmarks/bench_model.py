#!/usr/bin/env python
"""Model step benchmark: train and inference images/s and peak memory of petseg's UNet and ResNet34UNet next to
segmentation_models_pytorch's Unet("resnet34") (no pretrained weights), same input size and batch, in one run.

Throughput is measured in interleaved rounds (model A, B, C, A, B, C, ...) after warm-up steps, and the median
step time over all rounds is reported, so a busy machine slows every model alike. On CPU the table also gives
images per CPU-second of this process (median over steps): with --threads 1 that figure hardly moves when other
programs compete for the cores, where wall-clock images/s can drop several-fold. Peak memory is measured in a
fresh subprocess per model (CUDA: torch.cuda.max_memory_allocated; CPU: peak resident set size, sampled every
2 ms, above the process's size before the model was built; --smoke measures in-process).

    python benchmarks/bench_model.py                       # CPU, 256 x 256, batch 8
    python benchmarks/bench_model.py --device cuda --amp --channels-last --batch-size 32
    python benchmarks/bench_model.py --threads 1           # CPU figures that survive a busy machine
    python benchmarks/bench_model.py --smoke               # seconds: tiny sizes, for CI
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch

from petseg.losses import BCEDiceLoss
from petseg.models import ResNet34UNet, UNet

MODELS = ("unet", "resnet34_unet", "smp_unet_resnet34")
REFERENCE = "smp_unet_resnet34"


def have_smp() -> bool:
    "Whether segmentation_models_pytorch imports; says why where it does not."
    try:
        import segmentation_models_pytorch  # noqa: F401
        return True
    except ImportError:
        return False
    except Exception as e:  # installed but broken (e.g. against another timm or huggingface_hub): say so, go on
        print(f"segmentation_models_pytorch is installed but does not import ({type(e).__name__}: {e})")
        return False


def build(name: str, smoke: bool = False) -> torch.nn.Module:
    "The model called `name`; `smoke` shrinks the classic UNet so that CI runs in seconds."
    if name == "unet": return UNet(features=(8, 16, 32, 64)) if smoke else UNet()
    if name == "resnet34_unet": return ResNet34UNet()
    if name == "smp_unet_resnet34":
        import segmentation_models_pytorch as smp
        return smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


def loadavg() -> str:
    "The 1/5/15-minute load averages (other processes competing for the CPUs), or '?' where unknown."
    try: return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError: return "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: bool):
    "bf16 autocast where supported (CPU, CUDA with bf16), fp16 on older GPUs; nothing without --amp."
    if not amp: return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Runner:
    "A model with its optimizer, loss and a fixed random batch; `train_step` and `infer_step` run one step each."
    def __init__(self, name: str, args, device: torch.device):
        torch.manual_seed(0)
        self.name, self.args, self.device = name, args, device
        model = build(name, args.smoke).to(device)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        self.params = sum(p.numel() for p in model.parameters())
        self.model = torch.compile(model) if args.compile else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.loss = BCEDiceLoss()
        self.x = torch.randn(args.batch_size, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
        self.y = (torch.rand(args.batch_size, 1, args.size, args.size, device=device) > 0.5).float()
        self.scaler = torch.amp.GradScaler("cuda") if (args.amp and device.type == "cuda"
                                                       and not torch.cuda.is_bf16_supported()) else None

    def train_step(self) -> None:
        self.model.train()
        with autocast(self.device, self.args.amp):
            loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward(); self.scaler.step(self.opt); self.scaler.update()
        else:
            loss.backward(); self.opt.step()

    def infer_step(self) -> None:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.args.amp):
            self.model(self.x)


def timed(fn, device: torch.device, n: int, cpu: list[float] | None = None) -> list[float]:
    "Wall seconds of each of `n` calls of `fn` (synchronised on CUDA); appends each call's process CPU seconds to `cpu`."
    out = []
    for _ in range(n):
        sync(device); t, c = time.perf_counter(), time.process_time()
        fn(); sync(device)
        out.append(time.perf_counter() - t)
        if cpu is not None: cpu.append(time.process_time() - c)
    return out


def rss_bytes() -> int:
    "Current resident set size of this process."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    "Samples this process's resident set size every `interval` seconds in a thread; `.peak` is the largest seen."
    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes()); time.sleep(self.interval)

    def __enter__(self): self._thread.start(); return self

    def __exit__(self, *exc): self._stop.set(); self._thread.join(); self.peak = max(self.peak, rss_bytes())


def measure_memory(name: str, args) -> dict:
    "Peak memory (MiB) of inference then training steps of `name` in this (fresh) process."
    device = torch.device(args.device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device); base = torch.cuda.memory_allocated(device)
        r = Runner(name, args, device)
        for _ in range(2): r.infer_step()
        sync(device); infer = torch.cuda.max_memory_allocated(device) - base
        for _ in range(2): r.train_step()
        sync(device); train = torch.cuda.max_memory_allocated(device) - base
    else:
        base = rss_bytes()
        with PeakRSS() as pk:
            r = Runner(name, args, device)
            for _ in range(2): r.infer_step()
        infer = pk.peak - base
        with PeakRSS() as pk:
            for _ in range(2): r.train_step()
        train = max(pk.peak - base, infer)
    return dict(infer_mib=infer / 2**20, train_mib=train / 2**20)


def memory_in_subprocess(name: str, args) -> dict:
    "Run `measure_memory` for `name` in a fresh Python so that one model's peak does not hide another's."
    if args.smoke or args.memory_in_process: return measure_memory(name, args)  # seconds matter more here
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--device", args.device,
           "--size", str(args.size), "--batch-size", str(args.batch_size)]
    if args.threads: cmd += ["--threads", str(args.threads)]
    cmd += [f for f, on in (("--amp", args.amp), ("--channels-last", args.channels_last), ("--compile", args.compile),
                            ("--smoke", args.smoke)) if on]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0: raise RuntimeError(f"memory measurement of {name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe_device(device: torch.device) -> str:
    if device.type == "cuda": return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration): pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    p.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size, the same for every model (default 8)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the models (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per model and mode (default 2; more with --compile)")
    p.add_argument("--amp", action="store_true", help="autocast to bfloat16 (float16 + GradScaler on GPUs without bf16)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); --threads 1 with the "
                   "img/CPU-s columns gives figures that hold up on a machine busy with other work")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-in-process", action="store_true", help="measure peak memory in this process, not in one "
                   "fresh process per model: seconds instead of a Python start-up per model; on CUDA the figure is "
                   "the same kind (max_memory_allocated above what was allocated before), on CPU it is less exact")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--smoke", action="store_true", help="tiny run for CI: size 64, batch 2, 1 step, 1 round, tiny UNet")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.batch_size, args.steps, args.rounds, args.warmup = 64, 2, 1, 1, 1
    if args.compile and args.warmup < 3: args.warmup = 3
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(measure_memory(args.memory_worker, args))); return []
    device = torch.device(args.device)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS: raise SystemExit(f"unknown model {n!r}; valid: {', '.join(MODELS)}")
    if REFERENCE in names and not have_smp():
        print("segmentation_models_pytorch is not available (pip install segmentation-models-pytorch): skipping the reference")
        names.remove(REFERENCE)
    print(f"device: {describe_device(device)}; torch {torch.__version__}; load average {loadavg()}")
    print(f"input {args.batch_size} x 3 x {args.size} x {args.size}; amp={args.amp} channels_last={args.channels_last} "
          f"compile={args.compile}; {args.warmup} warm-up steps, then {args.rounds} rounds x {args.steps} timed steps per model"
          + ("  [smoke: tiny UNet]" if args.smoke else ""))
    runners = {n: Runner(n, args, device) for n in names}
    times = {n: {"train": [], "infer": [], "train_cpu": [], "infer_cpu": []} for n in names}
    for r in runners.values():
        for _ in range(args.warmup): r.train_step()
        for _ in range(args.warmup): r.infer_step()
    for _ in range(args.rounds):
        for n, r in runners.items():
            times[n]["train"] += timed(r.train_step, device, args.steps, times[n]["train_cpu"])
            times[n]["infer"] += timed(r.infer_step, device, args.steps, times[n]["infer_cpu"])
    params = {n: r.params for n, r in runners.items()}
    del runners; gc.collect()
    rows = []
    for n in names:
        row = dict(model=n, params_m=params[n] / 1e6,
                   train_ips=args.batch_size / statistics.median(times[n]["train"]),
                   infer_ips=args.batch_size / statistics.median(times[n]["infer"]),
                   train_ips_cpu=args.batch_size / statistics.median(times[n]["train_cpu"]),
                   infer_ips_cpu=args.batch_size / statistics.median(times[n]["infer_cpu"]), step_times=times[n])
        if not args.no_memory: row.update(memory_in_subprocess(n, args))
        rows.append(row)
    ref = next((r for r in rows if r["model"] == REFERENCE), None)
    head = (f"{'model':20s} {'params':>8s} {'train img/s':>12s} {'vs smp':>7s} {'infer img/s':>12s} {'vs smp':>7s}"
            + (f" {'train img/CPU-s':>16s} {'vs smp':>7s} {'infer img/CPU-s':>16s} {'vs smp':>7s}" if device.type == "cpu" else ""))
    if not args.no_memory: head += f" {'peak train MiB':>15s} {'peak infer MiB':>15s}"
    print(head); print("-" * len(head))
    for r in rows:
        ratio = lambda k: f"{r[k] / ref[k]:7.2f}" if ref else f"{'-':>7s}"
        line = (f"{r['model']:20s} {r['params_m']:7.2f}M {r['train_ips']:12.2f} {ratio('train_ips')} "
                f"{r['infer_ips']:12.2f} {ratio('infer_ips')}")
        if device.type == "cpu":
            line += f" {r['train_ips_cpu']:16.2f} {ratio('train_ips_cpu')} {r['infer_ips_cpu']:16.2f} {ratio('infer_ips_cpu')}"
        if not args.no_memory: line += f" {r['train_mib']:15.0f} {r['infer_mib']:15.0f}"
        print(line)
    print(f"load average at the end: {loadavg()}")
    if args.json:
        with open(args.json, "w") as f: json.dump(dict(args=vars(args), device=describe_device(device), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
