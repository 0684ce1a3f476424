"""Tiny PIL-drawn shard datasets for the training tests (written with eve_model.shards.ShardWriter).

Every sample has a caption and a conversation, so one dataset feeds every stage (stages 1-2 read
the caption, stage 3 the conversation, base-llm both). Images come in mixed aspect ratios, and
every ``text_only_every``-th sample has no image at all.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eve_model.shards import DatasetManifest, ShardSample, ShardWriter

REPO_ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ["circle", "square", "triangle"]
SIZES_PX = [(64, 48), (40, 80), (96, 96), (120, 60), (30, 30)]


def _draw(shape: str, colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(width // 2, height // 4), (width // 4, 3 * height // 4), (3 * width // 4, 3 * height // 4)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiny_dataset(out_dir: Path, num_samples: int = 48, items_per_shard: int = 16, text_only_every: int = 7) -> DatasetManifest:
    """Write ``num_samples`` samples into ``out_dir``; returns the manifest (``.dataset_hash``)."""
    colour_names = list(COLOURS)
    with ShardWriter(out_dir, max_items_per_shard=items_per_shard, extra={"purpose": "training tests"}) as writer:
        for index in range(num_samples):
            colour = colour_names[index % len(colour_names)]
            shape = SHAPES[(index // len(colour_names)) % len(SHAPES)]
            size = SIZES_PX[index % len(SIZES_PX)]
            caption = f"A {colour} {shape} on a white background."
            text_only = text_only_every and index % text_only_every == text_only_every - 1
            question = f"What colour is the {shape}?"
            meta = {
                "caption": caption,
                "conversations": [
                    {"from": "human", "value": question if text_only else f"<image>\n{question}"},
                    {"from": "gpt", "value": f"The {shape} is {colour}."},
                ],
                "width": None if text_only else size[0],
                "height": None if text_only else size[1],
                "source": {"generator": "tests", "index": index},
            }
            if text_only:
                writer.write(ShardSample(key=f"s{index:05d}", meta=meta))
            else:
                writer.write(ShardSample(key=f"s{index:05d}", meta=meta, image_bytes=_draw(shape, COLOURS[colour], size), image_ext="png"))
    return writer.manifest


def subprocess_env(eve_home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        EVE_HOME=str(eve_home),
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_ROOT),
        # One compiled-ops cache for all tests: DeepSpeed builds its CPU comm op once (~40 s).
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "eve-platform" / "torch_extensions")),
    )
    env.update(extra)
    return env


def torchrun_command(config_path: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "eve_model.train", str(config_path)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "eve_model.train", str(config_path),
    ]


def run_stage(config, config_path: Path, eve_home: Path, nproc: int = 2, timeout_seconds: float = 300, **extra_env: str):
    """Write ``config`` and run it to completion; returns the CompletedProcess."""
    config.write(config_path)
    return subprocess.run(
        torchrun_command(config_path, nproc), env=subprocess_env(eve_home, **extra_env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout_seconds,
    )


def start_stage(config, config_path: Path, eve_home: Path, nproc: int = 2, log_path: Path | None = None, **extra_env: str):
    """Start ``config`` in its own process group (so a drill can kill the whole job); returns the Popen."""
    config.write(config_path)
    log = open(log_path or config_path.with_suffix(".log"), "w")
    return subprocess.Popen(
        torchrun_command(config_path, nproc), env=subprocess_env(eve_home, **extra_env), cwd=REPO_ROOT,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised command name) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def kill_job(process: subprocess.Popen) -> list[int]:
    """SIGKILL a job started by ``start_stage``: the launcher's group and every rank's own group
    (torchrun starts each worker in a new session, so killing the launcher's group alone orphans them).
    Returns the pids of the ranks it killed."""
    workers = _children(process.pid)
    for worker in workers:
        try:
            os.killpg(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
    return workers


def wait_for_step(metrics_path: Path, step: int, process: subprocess.Popen, timeout_seconds: float = 240) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if metrics_path.exists():
            steps = [json.loads(line)["step"] for line in metrics_path.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        if process.poll() is not None:
            raise AssertionError(f"job ended (rc {process.returncode}) before step {step}")
        time.sleep(0.1)
    kill_job(process)
    raise AssertionError(f"step {step} not reached in {timeout_seconds} s")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
