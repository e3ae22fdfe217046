#!/usr/bin/env python
"""Every GPU figure of benchmarks/ in one bounded run, written as one Markdown table set and one JSON file.

Runs the other benchmark scripts, each in its own process under a time limit, and collects their --json output:

  model    bench_model.py: train/inference images/s and peak memory of UNet, ResNet34UNet and smp Unet("resnet34")
           in fp32, AMP (bf16, fp16 where the GPU lacks bf16) and AMP + channels_last, with ratios to smp;
  data     bench_data.py: images/s of JPEG decode + augment and uint8 cache + augment per DataLoader worker count,
           and of the on-GPU augmentation, against ResNet34UNet's fastest training rate from the model part;
  train    bench_epoch.py, once per model: the 256 px recipe (batch 8, AdamW one-cycle, uint8 cache, amp auto,
           on-GPU augmentation, 2 workers for the validation loader) for 15 epochs on
           the real sample: median and first epoch time, training images/s, valid Dice after the last epoch.

A part that fails or runs out of time is reported as such and the others still run; training writes its
figures after every epoch, so a stopped run keeps the epochs it finished. The whole run stops within --budget
seconds (default 450) plus a few seconds of start-up. Use benchmarks/gpu_check.sh, which first installs what is
missing (see benchmarks/README.md).

    python benchmarks/gpu_check.py --out /tmp/gpu            # one CUDA GPU, the real sample
    python benchmarks/gpu_check.py --smoke                   # CPU, tiny sizes, synthetic pets: for CI
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SAMPLE = REPO / ".." / "shared" / "oxford-pet-sample"
CARRIED_SAMPLE = REPO / "data" / "oxford-pet-sample"  # where `gpu_check.sh --prepare` copies it for the device tool
MODEL_CONFIGS = (("fp32", []), ("amp", ["--amp"]), ("amp_cl", ["--amp", "--channels-last"]))
CONFIG_LABELS = {"fp32": "fp32", "amp": "AMP", "amp_cl": "AMP + channels_last"}
TRAIN_MODELS = ("resnet34_unet", "unet")
MODEL_LABELS = {"unet": "UNet", "resnet34_unet": "ResNet34UNet", "smp_unet_resnet34": 'smp Unet("resnet34")'}
# seconds each part may take on the GPU (the smoke run on 2 CPU cores takes a fraction of these)
BUDGETS = {"model_fp32": 80, "model_amp": 55, "model_amp_cl": 55, "data": 70,
           "train_resnet34_unet": 80, "train_unet": 90}


def is_dataset(root: Path) -> bool:
    return (root / "annotations" / "trainval.txt").is_file() and (root / "images").is_dir()


def find_sample(given: Path | None) -> tuple[Path | None, str]:
    "The dataset root to use and a line saying which one (or why there is none)."
    if given is not None:
        if is_dataset(given): return given, f"sample: {given}"
        return None, f"sample: no dataset at --sample {given} (annotations/trainval.txt and images/ missing)"
    for root in (DEFAULT_SAMPLE, CARRIED_SAMPLE):
        if is_dataset(root): return root.resolve(), f"sample: {root.resolve()}"
    return None, (f"sample: none at {DEFAULT_SAMPLE} or {CARRIED_SAMPLE}; on the device machine copy it with "
                  "`bash benchmarks/gpu_check.sh --prepare` and carry data/oxford-pet-sample, or pass --sample DIR")


class Log:
    "Prints to the console and appends to a log file."
    def __init__(self, path: Path): self.file = open(path, "a", buffering=1)

    def __call__(self, text: str = "") -> None:
        print(text, flush=True); self.file.write(text + "\n")


def run_part(name: str, cmd: list[str], timeout: float, log: Log, env: dict) -> dict:
    "Run `cmd` in its own process group, stream its output to `log`, stop the whole group after `timeout` s."
    log(f"\n== {name} (limit {timeout:.0f} s): {' '.join(cmd)}")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                            start_new_session=True)
    tail: list[str] = []
    def pump():
        for line in proc.stdout:
            log(line.rstrip("\n")); tail.append(line); del tail[:-30]
    reader = threading.Thread(target=pump, daemon=True); reader.start()
    try:
        rc, status = proc.wait(timeout=timeout), None
    except subprocess.TimeoutExpired:
        status = "timed out"
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try: os.killpg(proc.pid, sig)
            except ProcessLookupError: break
            try: proc.wait(timeout=grace); break
            except subprocess.TimeoutExpired: pass
        rc = proc.returncode
    reader.join(timeout=5)
    seconds = time.perf_counter() - start
    status = status or ("ok" if rc == 0 else "failed")
    log(f"== {name}: {status} (exit {rc}) in {seconds:.1f} s")
    return dict(status=status, exit_code=rc, seconds=round(seconds, 1), command=cmd,
                output_tail="".join(tail)[-3000:] if status != "ok" else "")


def read_json(path: Path) -> dict | None:
    try: return json.loads(path.read_text())
    except (OSError, ValueError): return None


def environment(device: str) -> dict:
    "GPU, driver, CUDA, torch and machine facts for the table's header."
    import torch
    env = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), python=platform.python_version(),
               torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               cpu_count=os.cpu_count(), platform=platform.platform(), device=device,
               petseg_commit=git_commit())
    for key, dists in (("albumentations", ["albumentations"]), ("segmentation_models_pytorch", ["segmentation-models-pytorch"]),
                       ("numpy", ["numpy"]), ("cv2", ["opencv-python-headless", "opencv-python"])):
        env[key] = next((v for v in map(dist_version, dists) if v), "not installed")
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), compute_capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
        env["driver"] = nvidia_smi("driver_version")
    return env


def dist_version(name: str) -> str | None:
    "The installed version of distribution `name` (without importing it), or None."
    from importlib import metadata
    try: return metadata.version(name)
    except metadata.PackageNotFoundError: return None


def nvidia_smi(field: str) -> str:
    if not shutil.which("nvidia-smi"): return "unknown (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired): return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (no git checkout)"
    except (OSError, subprocess.TimeoutExpired): return "unknown (no git)"


# ---------------------------------------------------------------------------------------------------- the parts
def model_cmd(args, flags: list[str], out: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / "bench_model.py"), "--device", args.device, "--json", str(out), *flags]
    # smoke: bf16 autocast on a CPU is slow for the ResNet models at tiny sizes, so AMP runs the tiny UNet alone
    if args.smoke: return cmd + ["--smoke"] + (["--models", "unet"] if flags else [])
    return cmd + ["--size", str(args.size), "--batch-size", str(args.batch_size), "--rounds", "5", "--steps", "5",
                  "--warmup", "3", "--memory-in-process"]


def fastest_resnet_rate(parts: dict) -> tuple[float, str] | None:
    "ResNet34UNet's highest training images/s over the model configurations, and where it comes from."
    best = None
    for cfg, _ in MODEL_CONFIGS:
        res = parts.get(f"model_{cfg}", {}).get("result") or {}
        for row in res.get("rows", []):
            if row["model"] == "resnet34_unet" and (best is None or row["train_ips"] > best[0]):
                a = res["args"]
                best = (row["train_ips"], f"model part, {CONFIG_LABELS[cfg]}, batch {a['batch_size']} at {a['size']} px")
    return best


def data_cmd(args, sample: Path | None, model_rate, out: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / "bench_data.py"), "--device", args.device, "--json", str(out)]
    if model_rate: cmd += ["--model-ips", f"{model_rate[0]:.3f}"]
    if args.smoke: return cmd + ["--smoke"]
    workers = ",".join(str(w) for w in (0, 4, 8) if w <= (os.cpu_count() or 1))
    cmd += ["--size", str(args.size), "--batch-size", str(args.batch_size), "--workers", workers, "--epochs", "2"]
    return cmd + (["--root", str(sample)] if sample else ["--synthetic", "300"])


def train_cmd(args, model: str, sample: Path, out: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / "bench_epoch.py"), "--device", args.device, "--models", model, "--json", str(out)]
    if args.smoke: return cmd + ["--smoke"]
    return cmd + ["--root", str(sample), "--size", str(args.size), "--batch-size", str(args.train_batch_size),
                  "--epochs", str(args.epochs), "--workers", str(min(2, os.cpu_count() or 1)), "--amp", "auto"]


# ---------------------------------------------------------------------------------------------------- the report
def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def status_note(part: dict | None) -> str:
    if part is None: return "not run"
    s = part["status"]
    if s == "ok": return ""
    if s == "skipped": return f"skipped: {part['reason']}"
    return f"{s} after {part['seconds']} s (exit {part['exit_code']}); output in the log"


def model_table(parts: dict) -> list[str]:
    lines = ["| config | model | params | train img/s | vs smp | vs fp32 | infer img/s | vs smp | peak train MiB | peak infer MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    fp32 = {r["model"]: r for r in ((parts.get("model_fp32") or {}).get("result") or {}).get("rows", [])}
    notes = []
    for cfg, _ in MODEL_CONFIGS:
        part = parts.get(f"model_{cfg}")
        rows = ((part or {}).get("result") or {}).get("rows", [])
        if not rows:
            lines.append(f"| {CONFIG_LABELS[cfg]} | ({status_note(part) or 'no rows'}) | | | | | | | | |"); continue
        ref = next((r for r in rows if r["model"] == "smp_unet_resnet34"), None)
        for r in rows:
            vs = lambda k: fmt(r[k] / ref[k], ".2f") if ref else "-"
            base = fp32.get(r["model"])
            lines.append(f"| {CONFIG_LABELS[cfg]} | {MODEL_LABELS.get(r['model'], r['model'])} | {r['params_m']:.2f} M | "
                         f"{r['train_ips']:.1f} | {vs('train_ips')} | {fmt(r['train_ips'] / base['train_ips'], '.2f') if base else '-'} | "
                         f"{r['infer_ips']:.1f} | {vs('infer_ips')} | {fmt(r.get('train_mib'), '.0f')} | {fmt(r.get('infer_mib'), '.0f')} |")
        if note := status_note(part): notes.append(f"{CONFIG_LABELS[cfg]}: {note}")
    return lines + [""] + [f"- {n}" for n in notes]


def data_table(part: dict | None) -> list[str]:
    res = (part or {}).get("result")
    if not res: return [f"(no figures: {status_note(part) or 'no result'})"]
    lines = [f"Data: {res['data']}, {res['n_train']} training images, {res['size']} px, batch {res['batch_size']}; "
             f"uint8 cache built in {res['cache_build_s']:.1f} s.", "",
             "| pipeline | workers | images/s | x model |", "| --- | ---: | ---: | ---: |"]
    m = res.get("model_ips")
    for r in res["rows"]:
        if r["ips"] is None: lines.append(f"| {r['pipeline']} | {r['workers']} | failed: {r['error'][:120]} | |"); continue
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['ips']:.1f} | {fmt(r['ips'] / m, '.2f') if m else '-'} |")
    if m:
        src = part.get("model_rate_from") or "measured by bench_data.py (fp32)"
        lines.append(f"| ResNet34UNet training consumes ({src}) | | {m:.1f} | 1.00 |")
        dev = max((r for r in res["rows"] if r["pipeline"].startswith("(c)") and r["ips"] is not None),
                  key=lambda r: r["ips"], default=None)
        if dev: lines += ["", f"On-device augmentation delivers {dev['ips'] / m:.2f}x what ResNet34UNet consumes "
                              f"(best worker count, {dev['workers']}; target: at least 3x): "
                              f"{'met' if dev['ips'] >= 3 * m else 'not met'}."]
    return lines


def train_table(parts: dict) -> list[str]:
    lines = ["| model | epochs done / planned | median epoch s | first epoch s | train img/s | valid Dice (last epoch) | best valid Dice | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    setting = None
    for model in TRAIN_MODELS:
        part = parts.get(f"train_{model}")
        res = (part or {}).get("result") or {}
        rows = res.get("rows", [])
        if res: setting = res
        if not rows:
            lines.append(f"| {MODEL_LABELS[model]} | ({status_note(part) or 'no epochs'}) | | | | | | |"); continue
        r, note = rows[0], status_note(part)
        lines.append(f"| {MODEL_LABELS[model]} | {r['epochs']} / {res['planned_epochs']} | {r['epoch_s']:.2f} | "
                     f"{r['first_epoch_s']:.2f} | {r['train_ips']:.1f} | {r['final_dice']:.4f} | {r['best_dice']:.4f} | "
                     f"{r['total_s']:.0f} |" + (f" {note}" if note else ""))
    if setting:
        lines = [f"Data: {setting['root']}; {setting['size']} px, batch {setting['batch_size']}, amp {setting['amp']}, "
                 f"channels_last {setting['channels_last']}, {setting['workers']} workers; AdamW lr 1e-3 one-cycle, "
                 "uint8 cache; epoch time = training + validation; Dice = per-image mean on the valid split.", ""] + lines
    return lines


def markdown(report: dict) -> str:
    e, parts = report["environment"], report["parts"]
    gpu = (f"{e.get('gpu')} ({e.get('gpu_memory_gib')} GiB, compute capability {e.get('compute_capability')}), "
           f"driver {e.get('driver')}" if "gpu" in e else f"no GPU: device {e['device']}")
    out = [f"# petseg GPU check{' (smoke run: tiny sizes on the CPU, not figures to report)' if report['smoke'] else ''}", "",
           f"- {gpu}",
           f"- torch {e['torch']} (CUDA {e['torch_cuda']}, cuDNN {e['cudnn']}), Python {e['python']}, {e['cpu_count']} CPUs, "
           f"{e['platform']}",
           f"- albumentations {e['albumentations']}, segmentation_models_pytorch {e['segmentation_models_pytorch']}, "
           f"numpy {e['numpy']}, OpenCV {e['cv2']}; petseg commit {e['petseg_commit']}",
           f"- {report['date']}; whole run {report['seconds']:.0f} s (budget {report['budget_s']} s); {report['sample_line']}"]
    if "gpu" in e:
        out.append(f"- bf16 supported: {e['bf16']} (AMP rows use {'bf16' if e['bf16'] else 'fp16 + GradScaler'}); "
                   f"fp32 convolutions may use TF32: {e['cudnn_allow_tf32']}; fp32 matmuls TF32: {e['matmul_allow_tf32']}")
    mb = "tiny smoke sizes" if report["smoke"] else f"batch {report['batch_size']}, {report['size']} x {report['size']}"
    out += ["", f"## Model step ({mb}; AdamW + BCEDiceLoss on a fixed random batch; median step time)", ""] + model_table(parts)
    out += ["", "## Data pipeline (images/s delivered to the device)", ""] + data_table(parts.get("data"))
    out += ["", "## Training (bench_epoch.py)", ""] + train_table(parts)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for gpu_check.md, gpu_check.json and gpu_check.log "
                   "(default runs/gpu_check-<date>-<time>; on the device tool use $OUT)")
    p.add_argument("--sample", type=Path, help=f"Oxford Pet root in the official layout (default {DEFAULT_SAMPLE}, "
                   f"else {CARRIED_SAMPLE}); without one, training is skipped and the data part uses synthetic JPEGs")
    p.add_argument("--device", help="cuda, cuda:1, ... (default cuda; cpu with --smoke)")
    p.add_argument("--budget", type=float, default=450, help="seconds for all parts together (default 450; "
                   "--smoke triples it and every part's limit)")
    p.add_argument("--parts", default="model,data,train", help="comma-separated subset of model,data,train")
    p.add_argument("--size", type=int, default=256, help="image size of every part (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="batch of the model and data parts (default 32)")
    p.add_argument("--train-batch-size", type=int, default=8, help="batch of the training runs (default 8, the recipe's)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of each training run (default 15)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, synthetic pets: checks that everything runs")
    args = p.parse_args(argv)
    if args.device is None:
        import torch
        if args.smoke: args.device = "cpu"
        elif torch.cuda.is_available(): args.device = "cuda"
        else: p.error("no CUDA GPU visible to torch: run on a GPU machine, pass --device, or use --smoke on a CPU")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    # smoke: the limits only catch a hang; a busy 2-core CI machine can make a tiny part take a minute
    slack = 3 if args.smoke else 1
    deadline = start + slack * args.budget
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "runs" / f"gpu_check-{stamp}{'-smoke' if args.smoke else ''}"
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    wanted = {p.strip() for p in args.parts.split(",") if p.strip()}
    if unknown := wanted - {"model", "data", "train"}: sys.exit(f"--parts: unknown {', '.join(sorted(unknown))}; valid: model,data,train")
    sample, sample_line = find_sample(args.sample)
    if args.smoke: sample_line = "smoke: synthetic pets (make_synthetic_pets)"
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    os.environ.update(NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    environ = environment(args.device)
    log(f"gpu_check: {environ.get('gpu', 'device ' + args.device)}, driver {environ.get('driver', '-')}, torch {environ['torch']}; "
        f"{sample_line}; budget {args.budget:.0f} s; writing to {out}")
    parts: dict[str, dict] = {}

    def part(name: str, cmd: list[str] | None, json_path: Path, skip_reason: str = "") -> None:
        left = deadline - time.perf_counter()
        if cmd is None or left < 15:
            reason = skip_reason or f"only {max(left, 0):.0f} s of the budget left"
            parts[name] = dict(status="skipped", reason=reason); log(f"\n== {name}: skipped ({reason})"); return
        parts[name] = run_part(name, cmd, min(slack * BUDGETS[name], left), log, env)
        parts[name]["result"] = read_json(json_path)

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        if "model" in wanted:
            for cfg, flags in MODEL_CONFIGS:
                if args.smoke and cfg == "amp":  # each part costs a Python start-up (seconds on 2 cores)
                    part("model_amp", None, Path(), skip_reason="smoke: AMP + channels_last covers the AMP path"); continue
                part(f"model_{cfg}", model_cmd(args, flags, tmp / f"model_{cfg}.json"), tmp / f"model_{cfg}.json")
        if "data" in wanted:
            rate = fastest_resnet_rate(parts)
            part("data", data_cmd(args, sample, rate, tmp / "data.json"), tmp / "data.json")
            if rate: parts["data"]["model_rate_from"] = rate[1]
        if "train" in wanted:
            for model in TRAIN_MODELS:
                reason = ("" if args.smoke or sample is not None else "no Oxford Pet sample (see the sample line)") or \
                         ("smoke: one model is enough to check the path" if args.smoke and model != TRAIN_MODELS[0] else "")
                part(f"train_{model}", None if reason else train_cmd(args, model, sample, tmp / f"train_{model}.json"),
                     tmp / f"train_{model}.json", skip_reason=reason)
    report = dict(date=environ["date"], smoke=args.smoke, budget_s=args.budget, seconds=time.perf_counter() - start,
                  size=args.size, batch_size=args.batch_size, sample_line=sample_line, environment=environ, parts=parts)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    log("\n" + md)
    log(f"wrote {out / 'gpu_check.md'}, {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
    failed = [n for n, p in parts.items() if p["status"] in ("failed", "timed out")]
    if failed: log(f"parts that did not finish: {', '.join(failed)}")
    return report


if __name__ == "__main__":
    report = main()
    # a part stopped by its time limit keeps its partial figures on the GPU; in the smoke run it is an error
    bad = ("failed", "timed out") if report["smoke"] else ("failed",)
    sys.exit(1 if any(p["status"] in bad for p in report["parts"].values()) else 0)
