"""A checkpoint is a standard Hugging Face model directory: it carries its code and ``auto_map``, so
``AutoModelForCausalLM`` / ``AutoProcessor.from_pretrained(dir, trust_remote_code=True)`` work in an
interpreter that cannot import this package; ``AutoProcessor`` gives the EVE processor; ``generate``
returns prompt + new tokens (test_modeling.py checks the latter on a trained model)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from eve_model.modeling_eve import EveForCausalLM
from eve_model.processing_eve import EveProcessor
from tests.eve_model.test_modeling import noise_image

FRESH_INTERPRETER = textwrap.dedent(
    """
    import json, sys
    sys.modules["eve_model"] = None  # the package cannot be imported, even though the venv has it
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    torch.set_num_threads(1)
    path = sys.argv[1]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    pixels = np.random.default_rng(5).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    batch = processor.for_generation([Image.fromarray(pixels, mode="RGB")], [processor.prompt("What is this?")])
    batch.pop("teacher_pixel_values")
    with torch.no_grad():
        logits = model(**batch).logits
        output = model.generate(**batch, max_new_tokens=6, do_sample=False)
    print(json.dumps({
        "classes": [type(config).__name__, type(model).__name__, type(processor).__name__],
        "modules": sorted({type(obj).__module__.split(".")[0] for obj in (config, model, processor)}),
        "eve_model_imported": sys.modules.get("eve_model") is not None,
        "prompt_length": batch["input_ids"].shape[1],
        "output": output.tolist(),
        "logits_sum": float(logits.double().sum()),
    }))
    """
)


@pytest.fixture
def checkpoint(tiny_eve_checkpoint, tmp_path) -> Path:
    """A copy of the tiny checkpoint (written by save_pretrained, as the training job writes a stage)."""
    return Path(shutil.copytree(tiny_eve_checkpoint, tmp_path / "tiny-eve"))


def test_a_checkpoint_carries_its_code_and_auto_map(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_eve.EveConfig",
                                  "AutoModelForCausalLM": "modeling_eve.EveForCausalLM"}
    processor_config = json.loads((checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_eve.EveProcessor"}
    for name in ("configuration_eve.py", "modeling_eve.py", "processing_eve.py", "geometry.py", "constants.py"):
        assert (checkpoint / name).is_file(), name
    # The copied code imports no module of this package by absolute name (it would not exist elsewhere).
    for path in checkpoint.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(alias.name.split(".")[0] == "eve_model" for alias in node.names), path.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "eve_model", path.name
    # Training-only code (teachers and their weight packages) does not travel with the model.
    assert not (checkpoint / "teachers.py").exists() and not (checkpoint / "teacher_cache.py").exists()


def test_trust_remote_code_loads_in_a_fresh_interpreter_without_the_package(checkpoint, tmp_path):
    script = tmp_path / "load_remote.py"
    script.write_text(FRESH_INTERPRETER)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf-modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, str(script), str(checkpoint)], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert "Do you wish to run the custom code" not in completed.stdout  # nothing asked past trust_remote_code=True
    assert completed.returncode == 0, completed.stderr[-3000:]
    remote = json.loads(completed.stdout.strip().splitlines()[-1])
    assert remote["classes"] == ["EveConfig", "EveForCausalLM", "EveProcessor"]
    assert remote["modules"] == ["transformers_modules"] and not remote["eve_model_imported"]

    # The same numbers as the package's own classes on the same inputs.
    model = EveForCausalLM.from_pretrained(checkpoint).eval()
    processor = EveProcessor.from_pretrained(checkpoint)
    image = noise_image(80, 48, seed=5)  # the script's image
    batch = processor.for_generation([image], [processor.prompt("What is this?")])
    batch.pop("teacher_pixel_values")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            logits = model(**batch).logits
            output = model.generate(**batch, max_new_tokens=6, do_sample=False)
    finally:
        torch.set_num_threads(previous)
    assert remote["prompt_length"] == batch["input_ids"].shape[1]
    assert remote["output"] == output.tolist()
    assert remote["output"][0][: remote["prompt_length"]] == batch["input_ids"][0].tolist()  # prompt + new tokens
    assert abs(remote["logits_sum"] - float(logits.double().sum())) < 1e-6


def test_auto_classes_give_the_packages_eve_classes(checkpoint):
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert isinstance(processor, EveProcessor)  # not the tokenizer
    assert processor.max_length == EveProcessor.from_pretrained(checkpoint).max_length
    assert isinstance(AutoModelForCausalLM.from_pretrained(checkpoint), EveForCausalLM)
    remote_processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(remote_processor) is EveProcessor  # the package's class wins where it is imported
