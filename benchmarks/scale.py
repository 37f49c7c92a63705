"""Does acc scale: memory when streaming large image folders, the bridge's training speed, Ray scoring?

Four parts (issue 10, items 3 and 5), `--part memory|throughput|ray|ddp|all` (default all):

- memory: `acc prune` (1 ADMM epoch, no fine-tuning, uniform 0.3, batch 64) of a small 224x224 CNN
  (models/small224.py) on image-folder trees of CIFAR-10 training images upscaled to 224x224
  (bilinear, JPEG quality 90): 5,000 and 40,000 images, streamed (`--cache-mb 0 --workers 1`).
  The subprocess tree (main process + DataLoader workers) is polled every 0.2 s with psutil:
  peak RSS of the main process, peak of the tree's summed RSS (which counts shared pages once
  per process, so it overstates), and peak of the tree's summed PSS (shared pages split between
  the processes that map them). Reported: the peaks, the ratio peak(40,000) / peak(5,000), and
  whether both stay under 4 GB; one contrast row runs the in-memory path (`--cache-mb 100000`)
  on 2,000 images (`--limit 2000`). The trees are built once under ~/.cache/acc/bench/cifar224/
  (never in the repository; resumable, existing files are skipped).
- throughput: training images/s (forward + backward + SGD step on random inputs and labels, so
  compute only) of native torch against the module acc trains through the onnx2torch bridge
  (acc.prune.bridge.TorchModel of the exported graph, weights trainable as in `acc prune`), for
  ResNet-20 at 32x32 (batch 128) and the ImageNet ResNet-18 at 224x224 (batch 32); warm-up, then
  rounds interleaved A, B, A, B; medians and the ratio bridge / native (goal: >= 0.90).
- ray: one `acc compile` round of models/resnet20.onnx on models/data/cifar10_demo with a small
  budget, the search scoring K = 2 candidates per step serially in the process against 2 Ray
  actors of 1 CPU each (`--ray --candidates 2 --candidate-cpus 1`), same seed, runs interleaved;
  wall seconds of the whole compile and of the search (report.json's search record), their
  ratios, and whether the chosen rates are identical. With `--device cuda --gpu-shares 1,2,4`:
  candidates per minute with 1, 2, 4 Ray actors sharing one GPU (`--candidate-gpus 1/k`).
- ddp: `acc prune` of ResNet-20 (demo data, uniform 0.5, 2 + 2 epochs, global batch 128) as one
  process and as two gloo ranks (`--devices cpu,cpu`), 3 seeds: the gap in validation loss,
  parameters and near-zero purification between them, against the seed-to-seed spread.

    python benchmarks/scale.py                     # all three parts, 2 CPU cores (see --help)
    python benchmarks/scale.py --part memory
    python benchmarks/scale.py --quick             # smoke run at tiny sizes; never writes scale.json
    python benchmarks/scale.py --part ray --device cuda --gpu-shares 1,2,4   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc.format import table  # noqa: E402

QUESTION = ("Does acc scale? Peak memory of `acc prune` streaming a 224x224 image folder of 5,000 vs 40,000 "
            "images; training throughput of the onnx2torch bridge against native torch (ResNet-20 at 32 px, "
            "ResNet-18 at 224 px); wall time of the search scored on 2 Ray workers against serially.")
PACK = ROOT.parent / "shared" / "datasets" / "cifar10" / "train.jpeg.npz"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "acc" / "bench"
PREPROCESS_224 = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261], "size": [224, 224], "augment": "imagenet"}
GB = 1e9
MEMORY_LIMIT = 4 * GB  # the bound on the tree's peak

# Per mode: memory (small, big) folder sizes; the in-memory contrast's --limit; throughput runs; ray budget.
MEMORY_SIZES = {"full": (5000, 40000), "quick": (200, 400)}
CONTRAST_IMAGES = {"full": 2000, "quick": 100}
THROUGHPUT = {  # name, input side, batch, steps per round
    "full": [("resnet20", 32, 128, 4), ("resnet18_imagenet", 224, 32, 2)],
    "quick": [("resnet20", 32, 16, 1), ("resnet18_imagenet", 224, 2, 1)],
}
ROUNDS = {"full": 5, "quick": 2}
RAY_BUDGET = {
    "full": {"limit": 500, "budget_epochs": 2, "search_steps": 6, "search_finetune_steps": 30, "eval_images": 256, "test_limit": 500,
             "repeats": 2},
    "quick": {"limit": 120, "budget_epochs": 2, "search_steps": 1, "search_finetune_steps": 2, "eval_images": 32, "test_limit": 64, "repeats": 1},
}


def log(*args) -> None:
    print(*args, flush=True)


def cli_options(command: str) -> set[str]:
    """The long options `acc COMMAND --help` lists (other engineers are adding some right now)."""
    out = subprocess.run([sys.executable, "-m", "acc.cli", command, "--help"], capture_output=True, text=True, cwd=ROOT)
    return {word.strip("[],") for word in out.stdout.split() if word.startswith(("--", "[--"))}


def gb(value: float | None) -> str:
    return "–" if value is None else f"{value / GB:.2f}"


# ---------------------------------------------------------------------------------------- memory


def _write_one(job) -> int:
    """Decode one 32x32 JPEG, upscale to 224x224 (bilinear), save at quality 90 (atomically)."""
    import io

    from PIL import Image

    data, path = job
    path = Path(path)
    if path.exists():
        return 0
    with Image.open(io.BytesIO(data)) as image:
        big = image.convert("RGB").resize((224, 224), Image.BILINEAR)
    tmp = path.with_name(f".{path.name}.tmp")
    big.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)
    return 1


def build_trees(cache: Path, small: int, big: int, processes: int) -> tuple[Path, Path]:
    """cache/n<big>/<class>/<index>.jpg (class-balanced, seeded) and cache/n<small>/... as hard links
    to its first small/10 images of each class. Resumable: existing files are skipped; a `.complete`
    marker skips the scan next time."""
    import numpy as np

    from acc.data.cifar_pack import read_pack_arrays

    big_dir, small_dir = cache / f"n{big}", cache / f"n{small}"
    if (big_dir / ".complete").is_file() and (small_dir / ".complete").is_file():
        return small_dir, big_dir
    arrays = read_pack_arrays(PACK)
    jpeg, offsets, labels = arrays["jpeg"], arrays["offsets"], arrays["labels"]
    classes = [str(c) for c in arrays["classes"]]
    rng = np.random.default_rng(0)
    per_class_big, per_class_small = big // len(classes), small // len(classes)
    chosen = {}
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        chosen[name] = sorted(rng.permutation(members)[:per_class_big].tolist())
        (big_dir / name).mkdir(parents=True, exist_ok=True)
        (small_dir / name).mkdir(parents=True, exist_ok=True)
    jobs = [(jpeg[offsets[i]: offsets[i + 1]].tobytes(), str(big_dir / name / f"{i:05d}.jpg"))
            for name, indices in chosen.items() for i in indices]
    todo = [job for job in jobs if not Path(job[1]).exists()]
    log(f"image folder {big_dir}: {len(jobs) - len(todo)} of {len(jobs)} images already there, writing {len(todo)}"
        f" ({processes} processes)")
    started, written = time.time(), 0
    if todo:
        from multiprocessing import get_context

        with get_context("spawn").Pool(processes) as pool:
            for count in pool.imap_unordered(_write_one, todo, chunksize=64):
                written += 1
                if written % 2000 == 0 or written == len(todo):
                    rate = written / max(time.time() - started, 1e-9)
                    log(f"  {written}/{len(todo)} written, {rate:.0f} images/s, "
                        f"about {(len(todo) - written) / rate:.0f} s left")
    (big_dir / ".complete").write_text(json.dumps({"images": len(jobs), "per_class": per_class_big}))
    for name, indices in chosen.items():
        for i in indices[:per_class_small]:
            link = small_dir / name / f"{i:05d}.jpg"
            if not link.exists():
                os.link(big_dir / name / f"{i:05d}.jpg", link)
    (small_dir / ".complete").write_text(json.dumps({"images": per_class_small * len(classes), "hard_links_to": str(big_dir)}))
    return small_dir, big_dir


def export_small224(cache: Path) -> Path:
    from models.export import build, export_onnx, randomize_batchnorm

    path = cache / "small224.onnx"
    if not path.is_file():
        import torch

        torch.manual_seed(0)
        export_onnx(randomize_batchnorm(build("small224")), path.with_suffix(".tmp.onnx"), input_shape=(3, 224, 224))
        os.replace(path.with_suffix(".tmp.onnx"), path)
    (cache / "small224.preprocess.json").write_text(json.dumps(PREPROCESS_224, indent=2))
    return path


def watch(command: list[str], log_path: Path, limit_bytes: float, interval: float = 0.2) -> dict:
    """Run `command`, polling the RSS (and PSS) of its process tree every `interval` s; kill the tree
    if its summed RSS passes `limit_bytes` (the machine is shared)."""
    import psutil

    started = time.time()
    peaks = {"main_rss": 0, "tree_rss": 0, "tree_pss": 0, "processes": 1}
    killed = False
    with open(log_path, "w") as out:
        proc = psutil.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            try:
                members = [proc] + proc.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            rss = pss = 0
            for member in members:
                try:
                    info = member.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                    if member.pid == proc.pid:
                        peaks["main_rss"] = max(peaks["main_rss"], info.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            peaks["tree_rss"] = max(peaks["tree_rss"], rss)
            peaks["tree_pss"] = max(peaks["tree_pss"], pss)
            peaks["processes"] = max(peaks["processes"], len(members))
            if rss > limit_bytes:
                killed = True
                for member in reversed(members):  # children first, each by its own pid
                    try:
                        member.kill()
                    except psutil.NoSuchProcess:
                        pass
                break
            time.sleep(interval)
        code = proc.wait()
    return {**peaks, "returncode": code, "killed_over_limit": killed, "wall_seconds": time.time() - started}


def memory_part(args, mode: str) -> tuple[list[dict], dict]:
    small, big = MEMORY_SIZES[mode]
    cache = Path(args.cache) if args.cache else CACHE / ("cifar224_quick" if args.quick else "cifar224")
    cache.mkdir(parents=True, exist_ok=True)
    small_dir, big_dir = build_trees(cache, small, big, args.gen_processes)
    model = export_small224(cache)
    options = cli_options("prune")
    streaming = {"--cache-mb", "--workers"} <= options
    notes = []
    if not streaming:
        notes.append("`acc prune` has no --cache-mb/--workers yet: the rows below are the in-memory path, not streaming")
        log("NOTE: " + notes[-1])
        if not args.quick:
            log("memory part skipped: the full-size folders cannot be held in memory (about 6 GB of uint8 and "
                "24 GB of float for 40,000 images); run it again once streaming is in `acc prune`")
            return [{"part": "memory", "skipped": notes[-1]}], {"notes": notes}
    work = Path(tempfile.mkdtemp(prefix="acc_scale_memory_"))
    runs = [("stream", small_dir, small, None), ("stream", big_dir, big, None),
            ("in-memory", big_dir, CONTRAST_IMAGES[mode], CONTRAST_IMAGES[mode])]
    rows = []
    try:
        for path_kind, folder, images, limit in runs:
            out = work / f"{path_kind}_{images}"
            out.mkdir()
            command = [sys.executable, "-m", "acc.cli", "prune", str(model), "--data", str(folder), "--uniform", "0.3",
                       "--epochs", "1", "--finetune-epochs", "0", "--batch-size", "64", "--no-progress",
                       "-o", str(out / "model.onnx"), "--report", str(out / "report.json")]
            if streaming:
                command += ["--cache-mb", "0", "--workers", "1"] if path_kind == "stream" else ["--cache-mb", "100000"]
            if limit:
                command += ["--limit", str(limit)]
            log(f"memory: {path_kind}, {images} images: {' '.join(command[2:])}")
            result = watch(command, out / "log.txt", args.rss_limit_gb * GB)
            report = {}
            if (out / "report.json").is_file():
                report = json.loads((out / "report.json").read_text())
            error = None
            if result["returncode"] != 0:
                tail = (out / "log.txt").read_text().strip().splitlines()[-5:]
                error = "killed: tree RSS over --rss-limit-gb" if result["killed_over_limit"] else " | ".join(tail)
                log(f"  failed ({result['returncode']}): {error}")
            row = {"part": "memory", "path": path_kind if streaming else "in-memory", "folder": str(folder),
                   "images": images, "limit": limit,
                   "train_images": report.get("train_images"), "val_images": report.get("val_images"),
                   "main_peak_rss": result["main_rss"], "tree_peak_rss_sum": result["tree_rss"],
                   "tree_peak_pss_sum": result["tree_pss"], "processes_peak": result["processes"],
                   "wall_seconds": result["wall_seconds"], "prune_seconds": report.get("seconds"),
                   "returncode": result["returncode"], "error": error, "command": command[2:]}
            rows.append(row)
            log(f"  main peak {gb(row['main_peak_rss'])} GB, tree RSS {gb(row['tree_peak_rss_sum'])} GB, "
                f"tree PSS {gb(row['tree_peak_pss_sum'])} GB, {row['processes_peak']} processes, {row['wall_seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = rows[0], rows[1]
    summary = {"notes": notes, "streaming": streaming, "cache": str(cache)}
    if a["returncode"] == 0 and b["returncode"] == 0:
        summary.update({
            "ratio_tree_rss": b["tree_peak_rss_sum"] / a["tree_peak_rss_sum"],
            "ratio_tree_pss": b["tree_peak_pss_sum"] / a["tree_peak_pss_sum"] if a["tree_peak_pss_sum"] else None,
            "ratio_main_rss": b["main_peak_rss"] / a["main_peak_rss"],
            "images_ratio": big / small,
            "both_under_4gb": max(a["tree_peak_rss_sum"], b["tree_peak_rss_sum"]) < MEMORY_LIMIT,
        })
    return rows, summary


def print_memory(rows, summary) -> None:
    shown = [r for r in rows if "skipped" not in r]
    if not shown:
        return
    log()
    log("memory: `acc prune` of small224 (1 ADMM epoch, batch 64), peak memory of the process tree (GB = 1e9 bytes)")
    log(table(["path", "images", "main RSS", "tree RSS (sum)", "tree PSS (sum)", "processes", "wall s"],
              [[r["path"], r["images"], gb(r["main_peak_rss"]), gb(r["tree_peak_rss_sum"]), gb(r["tree_peak_pss_sum"]),
                r["processes_peak"], f"{r['wall_seconds']:.0f}" + ("" if r["returncode"] == 0 else " (failed)")] for r in shown],
              {1, 2, 3, 4, 5, 6}))
    if "ratio_tree_rss" in summary:
        log(f"peak({shown[1]['images']}) / peak({shown[0]['images']}) for {summary['images_ratio']:.0f}x the images: "
            f"tree RSS {summary['ratio_tree_rss']:.2f}, tree PSS {summary['ratio_tree_pss']:.2f}, main RSS "
            f"{summary['ratio_main_rss']:.2f}; both under 4 GB: {'yes' if summary['both_under_4gb'] else 'NO'}")
    log("The RSS sum counts pages shared between the main process and its DataLoader workers once per process; "
        "the PSS sum splits them.")
    for note in summary.get("notes", []):
        log("note: " + note)


# ------------------------------------------------------------------------------------ throughput


def bridge_module(native, side: int, folder: Path):
    """The module `acc prune` trains: the exported graph through acc's bridge, weights trainable."""
    from acc.passes.analysis import analyze
    from acc.passes.channels import WEIGHT_ROLES
    from acc.passes.importer import import_model
    from acc.prune.bridge import TorchModel
    from models.export import export_onnx

    path = export_onnx(native, folder / "model.onnx", input_shape=(3, side, side))
    model = import_model(path)
    weights = {m.initializer for m in analyze(model).members if m.role in WEIGHT_ROLES}
    return TorchModel(model, trainable=weights).module


def throughput_part(args, mode: str) -> tuple[list[dict], dict]:
    import torch

    from acc.prune.admm import sgd
    from acc.prune.objective import first_output
    from models.export import build, randomize_batchnorm

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name, side, batch, steps in THROUGHPUT[mode]:
        torch.manual_seed(0)
        native = randomize_batchnorm(build(name)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            bridged = bridge_module(native, side, Path(tmp))
        classes = native.fc.out_features
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, side, side, generator=generator).to(device)
        y = torch.randint(0, classes, (batch,), generator=generator).to(device)
        models = {}
        for kind, module in (("native", native), ("bridge", bridged)):
            module.to(device).train()
            models[kind] = (module, sgd(module, lr=0.01, momentum=0.9, weight_decay=5e-4))
        loss_fn = torch.nn.CrossEntropyLoss()

        def run(kind, n):
            module, opt = models[kind]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(first_output(module(x)), y)
                loss.backward()
                opt.step()
            sync()
            return n * batch / (time.perf_counter() - t0)

        for kind in models:  # warm-up
            run(kind, 1 if mode == "quick" else 3)
        rates = {"native": [], "bridge": []}
        for _ in range(ROUNDS[mode]):
            for kind in ("native", "bridge"):  # A, B, A, B
                rates[kind].append(run(kind, steps))
        native_ips, bridge_ips = statistics.median(rates["native"]), statistics.median(rates["bridge"])
        params = sum(p.numel() for p in native.parameters())
        trainable = sum(p.numel() for p in bridged.parameters() if p.requires_grad)
        row = {"part": "throughput", "model": name, "input": f"{side}x{side}", "batch": batch, "steps_per_round": steps,
               "rounds": ROUNDS[mode], "native_images_per_s": native_ips, "bridge_images_per_s": bridge_ips,
               "bridge_over_native": bridge_ips / native_ips, "within_10_percent": bridge_ips >= 0.9 * native_ips,
               "native_rounds": rates["native"], "bridge_rounds": rates["bridge"],
               "native_params": params, "bridge_trainable_params": trainable, "threads": threads, "device": str(device)}
        rows.append(row)
        log(f"throughput {name} {side}px batch {batch}: native {native_ips:.1f}, bridge {bridge_ips:.1f} images/s "
            f"({row['bridge_over_native']:.3f})")
    return rows, {"threads": threads, "device": str(device)}


def print_throughput(rows, summary) -> None:
    log()
    log(f"throughput: training images/s (forward + backward + SGD, random data), median of {rows[0]['rounds']} "
        f"interleaved rounds, {summary['threads']} torch threads, {summary['device']}")
    log(table(["model", "input", "batch", "native img/s", "bridge img/s", "bridge / native", "within 10 %"],
              [[r["model"], r["input"], r["batch"], f"{r['native_images_per_s']:.1f}", f"{r['bridge_images_per_s']:.1f}",
                f"{r['bridge_over_native']:.3f}", "yes" if r["within_10_percent"] else "no"] for r in rows], {2, 3, 4, 5}))


# ------------------------------------------------------------------------------------------- ray


def scored_candidates(search: dict) -> int:
    """Energies the search computed: distinct structures plus the confirmation's re-scorings."""
    c = search.get("confirmation") or {}
    return int(search.get("evaluated", 0)) + max(0, len(c.get("best_energies", [])) - 1) + max(0, len(c.get("start_energies", [])) - 1)


def run_compile(label: str, extra: list[str], budget: dict, args, work: Path, env: dict | None = None) -> dict:
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "acc.cli", "compile", str(ROOT / "models" / "resnet20.onnx"), "--rate", "2x",
               "--data", str(args.ray_data), "--rounds", "1", "--budget-epochs", str(budget["budget_epochs"]),
               "--limit", str(budget["limit"]), "--search-steps", str(budget["search_steps"]),
               "--search-finetune-steps", str(budget["search_finetune_steps"]), "--eval-images", str(budget["eval_images"]),
               "--test-limit", str(budget["test_limit"]), "--seed", "0", "--no-progress", "--device", args.device, "-o", str(out), *extra]
    log(f"ray: {label}: {' '.join(command[2:])}")
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.time() - started
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        log(f"  failed ({done.returncode}): {tail}")
        return {"label": label, "returncode": done.returncode, "error": tail, "wall_seconds": wall, "command": command[2:]}
    report = json.loads((out / "report.json").read_text())
    search = report["search"][0]
    round_seconds, prune_seconds = report["per_round"][0]["seconds"], report["rounds_detail"][0]["seconds"]
    search_seconds = search.get("seconds")
    result = {"label": label, "returncode": 0, "wall_seconds": wall, "compile_seconds": report["seconds"],
              "search_seconds": search_seconds if search_seconds is not None else round_seconds - prune_seconds,
              "search_seconds_source": "report" if search_seconds is not None else "round minus prune",
              "round_seconds": round_seconds, "prune_seconds": prune_seconds,
              "outside_round_seconds": report["seconds"] - round_seconds,  # cluster start, final report
              "search_setup_seconds": search.get("setup_seconds"), "scoring": search.get("scoring"),
              "scored_candidates": scored_candidates(search), "rates": report["per_round"][0]["rates"],
              "accuracy_after": report["accuracy_after"], "command": command[2:]}
    log(f"  {wall:.0f} s wall, search {result['search_seconds']:.1f} s, {result['scored_candidates']} candidates scored")
    return result


def ray_part(args, mode: str) -> tuple[list[dict], dict]:
    import torch

    budget = RAY_BUDGET[mode]
    options = cli_options("compile")
    needed = {"--ray", "--candidates", "--candidate-cpus", "--candidate-gpus"}
    if not needed <= options:
        reason = f"`acc compile` lacks {', '.join(sorted(needed - options))}"
        return [{"part": "ray", "skipped": reason}], {"budget": budget}
    work = Path(tempfile.mkdtemp(prefix="acc_scale_ray_"))
    rows, summary = [], {"budget": budget, "device": args.device}
    try:
        if args.gpu_shares:
            if args.device != "cuda" or not torch.cuda.is_available():
                reason = ("--gpu-shares needs --device cuda on a machine with a GPU (none here: "
                          f"torch.cuda.is_available() is {torch.cuda.is_available()}); not run")
                rows.append({"part": "ray", "mode": "gpu-shares", "skipped": reason})
            else:
                for k in [int(s) for s in args.gpu_shares.split(",")]:
                    share = 1.0 / k
                    r = run_compile(f"gpu_{k}", ["--ray", "--candidates", str(k), "--candidate-gpus", f"{share:.6g}"],
                                    budget, args, work)
                    per_minute = 60 * r["scored_candidates"] / r["search_seconds"] if r["returncode"] == 0 else None
                    rows.append({"part": "ray", "mode": "gpu-shares", "sharing": k, "candidate_gpus": share,
                                 "candidates_per_minute": per_minute, **r})
            return rows, summary
        # CPU: serial K=2 against 2 Ray actors of 1 CPU each, interleaved A, B, A, B.
        serial_env = {"OMP_NUM_THREADS": str(args.serial_threads)} if args.serial_threads else None
        for repeat in range(budget["repeats"]):
            for kind, extra, env in (("serial", ["--candidates", "2"], serial_env),
                                     ("ray", ["--ray", "--candidates", "2", "--candidate-cpus", "1"], None)):
                r = run_compile(f"{kind}_{repeat}", extra, budget, args, work, env)
                rows.append({"part": "ray", "mode": kind, "repeat": repeat, "candidates": 2, **r})
        ok = {kind: [r for r in rows if r["mode"] == kind and r["returncode"] == 0] for kind in ("serial", "ray")}
        if ok["serial"] and ok["ray"]:
            med = {kind: {key: statistics.median(r[key] for r in ok[kind]) for key in ("wall_seconds", "search_seconds")}
                   for kind in ok}
            reference = ok["serial"][0]["rates"]
            summary.update({
                "median_wall_seconds": {k: v["wall_seconds"] for k, v in med.items()},
                "median_search_seconds": {k: v["search_seconds"] for k, v in med.items()},
                "wall_ratio_ray_over_serial": med["ray"]["wall_seconds"] / med["serial"]["wall_seconds"],
                "search_ratio_ray_over_serial": med["ray"]["search_seconds"] / med["serial"]["search_seconds"],
                "rates_identical": all(r["rates"] == reference for r in ok["serial"] + ok["ray"]),
                "serial_threads": args.serial_threads or "torch default",
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, summary


def print_ray(rows, summary) -> None:
    shown = [r for r in rows if "skipped" not in r]
    for r in rows:
        if "skipped" in r:
            log(f"ray ({r.get('mode', 'cpu')}): {r['skipped']}")
    if not shown:
        return
    log()
    b = summary["budget"]
    log(f"ray: one `acc compile` round of ResNet-20 at 2x ({b['limit']} images, {b['budget_epochs']} epochs, "
        f"{b['search_steps']} search steps of K candidates, {b['search_finetune_steps']} fine-tune steps each, "
        f"{b['eval_images']} eval images)")
    if shown[0]["mode"] == "gpu-shares":
        log(table(["actors on one GPU", "candidate GPUs", "search s", "candidates", "candidates/min"],
                  [[r["sharing"], f"{r['candidate_gpus']:.3g}", f"{r.get('search_seconds', float('nan')):.1f}",
                    r.get("scored_candidates", "–"),
                    "–" if r["candidates_per_minute"] is None else f"{r['candidates_per_minute']:.1f}"] for r in shown],
                  {0, 1, 2, 3, 4}))
        return
    def scoring(r) -> str:
        s = r.get("scoring") or {}
        if s.get("mode") == "ray":
            return f"ray, {s.get('workers')} x {s.get('candidate_cpus')} CPU"
        return s.get("mode", "–")

    def number(value) -> str:
        return "–" if value is None else f"{value:.1f}"

    log(table(["run", "scoring", "wall s", "search s", "of which setup s", "prune s", "outside the round s",
               "candidates", "rates"],
              [[r["label"], scoring(r), f"{r['wall_seconds']:.1f}", number(r.get("search_seconds")),
                number(r.get("search_setup_seconds")), number(r.get("prune_seconds")), number(r.get("outside_round_seconds")),
                r.get("scored_candidates", "–"),
                "failed" if r["returncode"] else ",".join(f"{v:.2f}" for v in r["rates"].values())] for r in shown],
              {2, 3, 4, 5, 6, 7}))
    if "wall_ratio_ray_over_serial" in summary:
        log(f"Ray / serial, medians: wall {summary['wall_ratio_ray_over_serial']:.2f}, search "
            f"{summary['search_ratio_ray_over_serial']:.2f}; chosen rates identical: {summary['rates_identical']} "
            f"(serial torch threads: {summary['serial_threads']}; the Ray actors run 1 thread each; the Ray runs' "
            "wall time includes starting the local cluster)")


# ------------------------------------------------------------------------------------------- ddp

DDP_BUDGET = {"full": {"epochs": 2, "seeds": [0, 1, 2]}, "quick": {"epochs": 1, "seeds": [0]}}


def run_prune(label: str, extra: list[str], seed: int, epochs: int, work: Path) -> dict:
    out = work / f"{label}_seed{seed}.onnx"
    command = [sys.executable, "-m", "acc.cli", "prune", str(ROOT / "models" / "resnet20.onnx"), "--data",
               str(ROOT / "models" / "data" / "cifar10_demo"), "--uniform", "0.5", "--epochs", str(epochs),
               "--finetune-epochs", str(epochs), "--batch-size", "128", "--seed", str(seed), "--no-progress",
               "-o", str(out), "--report", f"{out}.json", *extra]
    log(f"ddp: {label} seed {seed}: {' '.join(command[3:])}")
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - started
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        log(f"  failed ({done.returncode}): {tail}")
        return {"part": "ddp", "label": label, "seed": seed, "returncode": done.returncode, "error": tail}
    r = json.loads(Path(f"{out}.json").read_text())
    purified = sum(sum(h["removed"].values()) for h in r["history"] if h.get("phase") == "purify")
    after = r["accuracy_after"]
    return {"part": "ddp", "label": label, "seed": seed, "returncode": 0, "world_size": r["world_size"],
            "wall_seconds": wall, "params_after": r["params"]["after_dense"], "purified_channels": purified,
            "val_loss": after["val"]["loss"], "val_accuracy": after["val"].get("accuracy"),
            "test_accuracy": (after.get("test") or {}).get("accuracy")}


def ddp_part(args, mode: str) -> tuple[list[dict], dict]:
    """`acc prune` of ResNet-20 (demo data, uniform 0.5) as 1 process and as 2 gloo ranks
    (`--devices cpu,cpu`), same global batch 128, same seeds, runs interleaved."""
    budget = DDP_BUDGET[mode]
    work = Path(tempfile.mkdtemp(prefix="acc_ddp_"))
    rows = []
    for seed in budget["seeds"]:
        rows.append(run_prune("1 process", [], seed, budget["epochs"], work))
        rows.append(run_prune("2 processes", ["--devices", "cpu,cpu"], seed, budget["epochs"], work))
    ok = [r for r in rows if r["returncode"] == 0]
    one = {r["seed"]: r for r in ok if r["world_size"] == 1}
    two = {r["seed"]: r for r in ok if r["world_size"] == 2}
    paired = sorted(set(one) & set(two))
    summary = {"budget": budget}
    if paired:
        loss_gap = [two[s]["val_loss"] - one[s]["val_loss"] for s in paired]
        summary.update({
            "val_loss_gap_mean": statistics.mean(loss_gap),
            "val_loss_relative_gap_max": max(abs(two[s]["val_loss"] / one[s]["val_loss"] - 1) for s in paired),
            "params_gap_max": max(abs(two[s]["params_after"] - one[s]["params_after"]) for s in paired),
            "purified_channels_gap_max": max(abs(two[s]["purified_channels"] - one[s]["purified_channels"]) for s in paired),
            "val_loss_seed_std_1process": statistics.stdev([one[s]["val_loss"] for s in paired]) if len(paired) > 1 else None,
            "wall_ratio_2_over_1": statistics.median(two[s]["wall_seconds"] / one[s]["wall_seconds"] for s in paired),
        })
    shutil.rmtree(work, ignore_errors=True)
    return rows, summary


def print_ddp(rows, summary) -> None:
    shown = [[r["label"], r["seed"], r.get("params_after", "-"), r.get("purified_channels", "-"),
              f"{r['val_loss']:.4f}" if "val_loss" in r else r.get("error", "-"),
              f"{100 * r['test_accuracy']:.2f}" if r.get("test_accuracy") is not None else "-",
              f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else "-"] for r in rows]
    log("\n" + table(["run", "seed", "params after", "purified ch.", "val loss", "test acc %", "wall s"], shown, {1, 2, 3, 4, 5, 6}))
    if "val_loss_gap_mean" in summary:
        log(f"2 processes - 1 process: val loss {summary['val_loss_gap_mean']:+.4f} on average "
            f"(largest relative gap {100 * summary['val_loss_relative_gap_max']:.1f} %; seed-to-seed std of 1 process "
            f"{summary['val_loss_seed_std_1process'] or 0:.4f}); parameters differ by at most {summary['params_gap_max']}, "
            f"purification by {summary['purified_channels_gap_max']} channels; wall ratio {summary['wall_ratio_2_over_1']:.2f}")


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["memory", "throughput", "ray", "ddp", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="smoke run at tiny sizes; writes scale_quick.json (never scale.json)")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results; a temp folder with --quick)")
    p.add_argument("--device", default="cpu", help="throughput and ray parts (memory stays on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the throughput part (default: all cores)")
    p.add_argument("--gpu-shares", default=None, metavar="K,K,...",
                   help="ray part on a GPU: candidates per minute with K actors sharing one GPU (--candidate-gpus 1/K)")
    p.add_argument("--serial-threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the serial compile runs (default: torch's own; 1 matches the Ray actors)")
    p.add_argument("--ray-data", default=str(ROOT / "models" / "data" / "cifar10_demo"))
    p.add_argument("--cache", default=None, help="folder of the 224x224 image trees (default ~/.cache/acc/bench/cifar224[_quick])")
    p.add_argument("--gen-processes", type=int, default=os.cpu_count(), help="processes writing the image trees")
    p.add_argument("--rss-limit-gb", type=float, default=16.0, help="kill an `acc prune` run whose tree RSS passes this")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    parts = ["memory", "throughput", "ray", "ddp"] if args.part == "all" else [args.part]
    started = time.time()
    rows, summaries = [], {}
    for part, (run, show) in {"memory": (memory_part, print_memory), "throughput": (throughput_part, print_throughput),
                              "ray": (ray_part, print_ray), "ddp": (ddp_part, print_ddp)}.items():
        if part not in parts:
            continue
        t0 = time.time()
        part_rows, summary = run(args, mode)
        summary["seconds"] = time.time() - t0
        rows += part_rows
        summaries[part] = summary
        show(part_rows, summary)
    budget = {"mode": mode, "parts": parts, "memory_images": MEMORY_SIZES[mode], "contrast_images": CONTRAST_IMAGES[mode],
              "throughput": THROUGHPUT[mode], "throughput_rounds": ROUNDS[mode], "ray": RAY_BUDGET[mode],
              "ddp": DDP_BUDGET[mode], "device": args.device, "seconds": time.time() - started}
    log(f"\n{mode} run, {budget['seconds']:.0f} s")
    out = args.out or (Path(tempfile.gettempdir()) / "acc_bench" if args.quick else None)
    name = "scale_quick" if args.quick else ("scale" if args.part == "all" else f"scale_{args.part}")
    path = record.write(name, QUESTION, rows, budget, out, summary=summaries)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
