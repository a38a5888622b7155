"""Training end to end, as a user runs it: `python -m studio train` vs diffusers' LoRA example, cold processes.

Each side is one fresh process, timed from start to exit: imports, model load, data, every step, the
adapter file (and, for Studio, its default end-of-run sample, cache and manifest). The baseline is
`example_lora_train.py` in this folder, a bench-only re-implementation of diffusers'
`examples/text_to_image/train_text_to_image_lora.py` (see its docstring). Same full-size SD1.5
architecture (random weights, bundled configs), same 6 photos, same resolution, batch 1, LoRA rank 16
on the UNet attention, AdamW at 1e-4, a constant LR, random flips, the same number of steps.

Two comparisons:
    equal precision   both in fp32 (Studio --mixed-precision no, the example --mixed_precision no)
    defaults          Studio's automatic precision (bf16 autocast on CPUs with native bf16) vs the
                      example's default (no mixed precision unless accelerate is configured: fp32)
    again             fp32 both, Studio's second run on the same photos under another name (a new rank or
                      learning rate, as users iterate): the latents cached by the first run are reused

Studio prints its time per phase at the end of the run; the example's phases are timed inside it.
Goal: Studio finishes in at most 1/1.5 of the example's time (a 1.5x speed-up), end to end.

On a quiet machine the sides run one after the other and wall time is the measure. On a shared machine
(`--together`) the two sides of a comparison run at the same time, so they see the same load, and the
verdict is on CPU time (user + system of each process, from wait4): wall time then mostly measures the
other jobs. Either way both are printed.

    python bench/bench_training_e2e.py --quick            # 256 px, 6 steps (one epoch of 6 photos)
    python bench/bench_training_e2e.py                    # 512 px, 30 steps (5 epochs): ~20 min per side on 2 cores
    python bench/bench_training_e2e.py --only equal       # one comparison (or several: --only equal,again)
    python bench/bench_training_e2e.py --model /tmp/sd15-full   # reuse a full-size folder (else built, ~1 min)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_training import _full_size_sd15
from common import ROOT, Row, main_for, ratio_row

HERE = Path(__file__).resolve().parent
PHOTOS = 6
RANK = 16
COMPARISONS = {  # name: (Studio's --mixed-precision, the example's --mixed_precision or None for its default)
    "equal": ("no", "no"),
    "defaults": ("auto", None),
    "again": ("no", "no"),  # Studio's second run on the same photos (another name): the latent cache is shared
}
LABELS = {
    "equal": "fp32 both",
    "defaults": "Studio auto vs example default",
    "again": "fp32 both, Studio's second run on the same photos",
}


def _option(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def run(quick: bool) -> list[Row]:
    resolution, epochs = (256, 1) if quick else (512, 5)
    only, together = _option("--only"), "--together" in sys.argv
    measure = "cpu" if together else "wall"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        tmp = Path(tmp)
        photos = _photos(tmp / "photos")
        model = Path(_option("--model") or _full_size_sd15(tmp / "sd15-full"))
        steps = epochs * PHOTOS
        examples = {}  # the example's result per precision: "again" reuses the one "equal" measured in this run
        for name, (ours_precision, example_precision) in COMPARISONS.items():
            if only and name not in only.split(","):
                continue
            studio_root = tmp / f"studio-{name}"
            if name == "again":  # a first run on the same photos fills the shared cache; it is not timed
                first = _studio_command(studio_root, photos, model, resolution, epochs, ours_precision, "first")
                _finish(_start(first))
            studio = _start(_studio_command(studio_root, photos, model, resolution, epochs, ours_precision))
            if not together or example_precision in examples:
                studio = _finish(studio)
            if example_precision not in examples:
                examples[example_precision] = _start(
                    _example_command(tmp / f"example-{name}", photos, model, resolution, epochs, example_precision)
                )
            ours = _studio_result(_finish(studio))
            if "phases" not in examples[example_precision]:
                examples[example_precision] = _example_result(_finish(examples[example_precision]))
            theirs = examples[example_precision]
            _print_phases(name, ours, theirs)
            title = f"train end to end, full-size SD1.5 {resolution}px {steps} steps, {LABELS[name]}"
            for kind in ("cpu", "wall"):
                note = f"speed-up {theirs[kind] / ours[kind]:.2f}x"
                if kind == measure:
                    note += f"; ran {ours['precision']} vs {example_precision or 'default (fp32)'}"
                rows.append(
                    ratio_row(
                        f"{title}: studio CLI vs example, {kind} time",
                        ours[kind],
                        theirs[kind],
                        "s",
                        max_ratio=round(1 / 1.5, 3) if kind == measure else None,
                        note=note,
                    )
                )
    return rows


def _photos(folder: Path) -> Path:
    """6 landscape photos, 4:3 and 3:4 at 768x576 (larger than 512 px, as photos are), captioned in metadata.jsonl."""
    from tests.helpers import landscape

    folder.mkdir(parents=True)
    lines = []
    for i in range(PHOTOS):
        size = (768, 576) if i % 3 else (576, 768)
        landscape(*size, seed=i).save(folder / f"peak-{i}.jpg", quality=92)
        lines.append(json.dumps({"file_name": f"peak-{i}.jpg", "text": f"satellite image of mountains, ridge {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _start(job: tuple[list[str], Path]) -> dict:
    """Start a side in its own process; its output goes to files in its folder (no pipe to fill up)."""
    command, cwd = job
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = open(cwd / "stdout.txt", "w"), open(cwd / "stderr.txt", "w")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=out, stderr=err, env=_env(), cwd=cwd)
    side = {"process": process, "started": started, "cwd": cwd, "files": (out, err)}

    def wait():  # in a thread, so each side's end is seen when it happens, whichever is collected first
        side["exit"] = os.wait4(process.pid, 0)
        side["ended"] = time.perf_counter()

    side["waiter"] = threading.Thread(target=wait, daemon=True)
    side["waiter"].start()
    return side


def _finish(side: dict) -> dict:
    """Wait for a side: its wall time, CPU time (user + system, from wait4) and output."""
    if "wall" in side:
        return side
    side["waiter"].join()
    _, status, usage = side["exit"]
    wall = side["ended"] - side["started"]
    for file in side["files"]:
        file.close()
    cwd = side["cwd"]
    stdout, stderr = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cwd.name} failed ({os.waitstatus_to_exitcode(status)}):\n{stderr[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stdout": stdout, "stderr": stderr, "cwd": cwd}


def _studio_command(
    root: Path, photos: Path, model: Path, resolution: int, epochs: int, precision: str, name: str = "bench"
):
    """`python -m studio train` with its defaults (preset auto) and the shared settings."""
    command = [sys.executable, "-m", "studio", "train", "--data", str(photos), "--model", str(model)]
    command += ["--name", name, "--epochs", str(epochs), "--resolution", str(resolution), "--batch", "1"]
    command += ["--rank", str(RANK), "--alpha", str(RANK), "--mixed-precision", precision]
    command += ["--models-dir", str(root / "models"), "--loras-dir", str(root / "loras")]
    command += ["--outputs-dir", str(root / "outputs")]
    return command, root


def _studio_result(side: dict) -> dict:
    manifest = json.loads((side["cwd"] / "loras" / "bench" / "adapter.json").read_text())
    values = {**side, "phases": _phases(side["stderr"]), "precision": manifest["settings"]["mixed_precision"]}
    print(f"studio: {side['wall']:.1f} s wall, {side['cpu']:.1f} s CPU, ran {values['precision']}", file=sys.stderr)
    return values


def _phases(stderr: str) -> dict[str, float]:
    """The table after "Time per phase:" in Studio's output: {phase: seconds}."""
    lines = stderr.split("Time per phase:", 1)[1].strip().splitlines()[1:]
    phases = {}
    for line in lines:
        name, seconds, *_ = line.split()
        if name == "total":
            break
        phases[name] = float(seconds)
    return phases


def _example_command(root: Path, photos: Path, model: Path, resolution: int, epochs: int, precision: str | None):
    command = [sys.executable, str(HERE / "example_lora_train.py"), "--pretrained_model_name_or_path", str(model)]
    command += ["--train_data_dir", str(photos), "--resolution", str(resolution), "--random_flip"]
    command += ["--train_batch_size", "1", "--num_train_epochs", str(epochs), "--rank", str(RANK), "--seed", "42"]
    command += ["--output_dir", str(root / "out"), "--cache_dir", str(root / "datasets-cache")]
    if precision is not None:
        command += ["--mixed_precision", precision]
    return command, root


def _example_result(side: dict) -> dict:
    values = json.loads(side["stdout"].strip().splitlines()[-1])
    print(f"example: {side['wall']:.1f} s wall, {side['cpu']:.1f} s CPU, {values['steps']} steps", file=sys.stderr)
    return {**side, "phases": values["phases"]}


def _print_phases(name: str, ours: dict, example: dict) -> None:
    print(
        f"\n{name}: seconds per phase (wall time of the process: studio {ours['wall']:.1f}, example "
        f"{example['wall']:.1f}; the rest is Python start-up and imports)",
        file=sys.stderr,
    )
    for side, values in (("studio", ours), ("example", example)):
        parts = " · ".join(f"{k} {v:.1f}" for k, v in values["phases"].items())
        print(f"  {side:<8} {parts}", file=sys.stderr)


if __name__ == "__main__":
    main_for(run)
