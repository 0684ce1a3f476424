"""The upstream EVE v1 golden tensors (float64, small dims) and the model configs that match them.

The tensors live outside the repository, at ``../shared/golden/eve-v1-upstream/`` relative to the repo
root (the same layout on CI); they were computed by baaivision/EVE@cc63ec7 (EVEv1) with its forward code
unmodified. They must be present: a missing or altered file fails the parity tests, it never skips them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / ".." / "shared" / "golden" / "eve-v1-upstream"
GOLDEN_SHA256 = {
    "pel_small.safetensors": "7d4b789a0043550f7632d8129112251e5d27ab254316e4c5afdf7cdb5c41463d",
    "pal_small.safetensors": "e0097d8523abf9f889e0c3203fbb0bd9b0badbb6a6f4dc3617d1000941361576",
}
PARITY_TOLERANCE = 1e-10
"""Max |diff| allowed in float64 (the upstream run itself moves by ~2e-15 between 1 and 8 threads)."""


def load_golden(name: str) -> dict:
    """All tensors of one golden file, after checking it exists and has the recorded sha256."""
    from safetensors.torch import load_file

    from eve_model.identity import file_sha256

    path = (GOLDEN_DIR / name).resolve()
    if not path.is_file():
        pytest.fail(f"golden reference {path} is missing: the upstream parity tests need ../shared/golden/eve-v1-upstream")
    digest = file_sha256(path)
    if digest != GOLDEN_SHA256[name]:
        pytest.fail(f"golden reference {path} has sha256 {digest}, expected {GOLDEN_SHA256[name]}")
    return load_file(str(path))


def upstream_parameters(golden: dict) -> dict:
    """The ``param.*`` tensors under the names of upstream's full checkpoint (``model.`` prefix)."""
    return {"model." + name.removeprefix("param."): tensor for name, tensor in golden.items() if name.startswith("param.")}


def golden_config(image_max_side: int = 112, pixel_protocol: str = "upstream"):
    """The EveConfig of the golden dims: PEL 64 wide (8 heads, full-width scale), patch 14, pool 2, projector
    64 -> 128 -> 128, an 8-layer decoder of width 128 read by the PAL at depths 8, 4, 0, teacher 56 px on a 4x4
    grid of 64-wide features; the bundled tiny tokenizer's vocabulary."""
    from transformers import LlamaConfig

    from eve_model.configuration_eve import EveConfig
    from eve_model.tokenizer import TINY_VOCAB_SIZE

    text_config = LlamaConfig(vocab_size=TINY_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                              bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    return EveConfig.eve_7b(
        text_config=text_config, image_token_id=4, pel_width=64, pel_num_heads=8, patch_size=14, pool_stride=2,
        projector_hidden_size=128, attention_full_width_scale=True, image_max_side=image_max_side,
        teacher_image_size=56, teacher_grid_size=4, teacher_feature_dim=64, alignment_width=64,
        alignment_num_heads=8, alignment_depth_interval=4, pixel_protocol=pixel_protocol, teacher_path=None,
    )


def golden_raw_image(width: int, height: int, seed: int):
    """The synthetic RGB image the golden inputs were made from (README: sinusoids plus seeded noise)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 128 + 100 * np.sin(x / (7 + seed))
    green = 128 + 100 * np.cos(y / 11)
    blue = 128 + 60 * np.sin((x + y) / 5)
    pixels = np.stack([red, green, blue], axis=-1) + np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


GOLDEN_PEL_IMAGES = ((672, 672), (336, 672), (672, 224), (100, 60))
"""Raw width x height of PEL input i (made with seed i)."""
