"""This library against upstream EVE v1 in float64 (``../shared/golden/eve-v1-upstream``, see its README).

Parameters come in under their upstream names and go through ``eve convert upstream``'s mapping; the
outputs must match upstream's to ``PARITY_TOLERANCE`` (1e-10): the PEL + projector on four aspect ratios
(tokens, grids, gradients of 16 parameters), the PAL loss per sample and its gradients (1:1 and 2x2-pooled
grids), the upstream pixel protocol's canvases (bit for bit), and the converter end to end on a synthetic
upstream directory built from the same tensors.
"""

from __future__ import annotations

import json

import pytest
import torch

from eve_model.convert_upstream import (
    NAME_RULES,
    UpstreamConversionError,
    convert_state_dict,
    library_name,
    map_names,
    upstream_name,
)
from eve_model.geometry import visual_token_count
from eve_model.modeling_eve import EveForCausalLM, VisualTokens
from eve_model.processing_eve import EveImageProcessor
from eve_model.teacher_base import VisionTeacher
from tests.golden.upstream_golden import (
    GOLDEN_PEL_IMAGES,
    PARITY_TOLERANCE,
    golden_config,
    golden_raw_image,
    load_golden,
    upstream_parameters,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pel_golden() -> dict:
    return load_golden("pel_small.safetensors")


@pytest.fixture(scope="module")
def pal_golden() -> dict:
    return load_golden("pal_small.safetensors")


def golden_model(upstream: dict, image_max_side: int = 112) -> tuple[EveForCausalLM, dict]:
    """A float64 EVE of the golden dims whose PEL/PAL hold the golden parameters, loaded through the
    converter's mapping; returns the model and the mapping (library name -> upstream name)."""
    model = EveForCausalLM(golden_config(image_max_side)).double()
    model_state, aligning_state, mapping = convert_state_dict(upstream)
    assert not mapping.dropped
    pel_state = {name.removeprefix("patch_embedding."): tensor for name, tensor in model_state.items()}
    if pel_state:
        assert set(pel_state) == set(model.patch_embedding.state_dict())  # every PEL parameter exactly once
        model.patch_embedding.load_state_dict(pel_state, strict=True)
    if aligning_state:
        model.build_aligning_layer().load_state_dict(aligning_state, strict=True)
    return model, {target: source for source, target in mapping.converted.items()}


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float64
    return float((ours - theirs).abs().max())


# ---------------------------------------------------------------------------------------------------- PEL
def test_pel_and_projector_match_upstream_on_every_aspect_ratio(pel_golden):
    model, _ = golden_model(upstream_parameters(pel_golden))
    pixels = torch.stack([pel_golden[f"input.{index}"] for index in range(4)])
    with torch.no_grad():
        visual = model.patch_embedding(pixels)
    for index, tokens in enumerate(visual.split()):
        assert visual.grid_hw[index].tolist() == pel_golden[f"grid_hw.{index}"].tolist()
        height, width = pel_golden[f"grid_hw.{index}"].tolist()
        assert tokens.shape[0] == visual_token_count(height, width)
        assert max_diff(tokens, pel_golden[f"output.{index}"]) < PARITY_TOLERANCE, index


def test_pel_gradients_match_upstream(pel_golden):
    model, upstream_of = golden_model(upstream_parameters(pel_golden))
    for index in range(4):
        model.zero_grad()
        tokens = model.patch_embedding(pel_golden[f"input.{index}"][None]).embeddings
        (tokens * pel_golden[f"cotangent.{index}"]).sum().backward()
        compared = 0
        for name, parameter in model.named_parameters():
            key = f"grad.{index}.{upstream_of.get(name, '').removeprefix('model.')}"
            if key in pel_golden:
                assert max_diff(parameter.grad, pel_golden[key]) < PARITY_TOLERANCE, (index, name)
                compared += 1
        assert compared == 16  # every gradient upstream stored


def test_upstream_pixel_protocol_rebuilds_upstreams_canvases_bit_for_bit(pel_golden):
    config = golden_config()
    upstream = EveImageProcessor.from_eve_config(config)
    assert upstream.pixel_protocol == "upstream"
    batch = upstream([golden_raw_image(width, height, seed) for seed, (width, height) in enumerate(GOLDEN_PEL_IMAGES)])
    for index in range(4):
        assert torch.equal(batch["pixel_values"][index].double(), pel_golden[f"input.{index}"]), index
        assert batch["image_grid_hw"][index].tolist() == pel_golden[f"grid_hw.{index}"].tolist()
    # The platform protocol pads with the exact mean (0 after normalisation): different canvases, same tokens.
    platform = EveImageProcessor.from_eve_config(golden_config(pixel_protocol="platform"))
    mine = platform([golden_raw_image(width, height, seed) for seed, (width, height) in enumerate(GOLDEN_PEL_IMAGES)])
    assert not torch.equal(mine["pixel_values"], batch["pixel_values"])
    model, _ = golden_model(upstream_parameters(pel_golden))
    with torch.no_grad():
        ours = model.patch_embedding(mine["pixel_values"].double()).split()
    for index in range(4):
        assert max_diff(ours[index], pel_golden[f"output.{index}"]) < PARITY_TOLERANCE  # the PEL never reads padding


# ---------------------------------------------------------------------------------------------------- PAL
class StoredTeacher(VisionTeacher):
    """Upstream's stand-in: returns the stored teacher features; valid cells come from the mask channel."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.stored = features  # (B, 16, 64), row-major over the 4x4 grid
        self.image_size, self.grid_size, self.feature_dim, self.weights_sha256 = 56, 4, 64, "stored"
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64), requires_grad=False)  # its dtype

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.stored.transpose(1, 2).reshape(rgb.shape[0], 64, 4, 4)


def pal_inputs(golden: dict, case: str) -> tuple[dict, torch.Tensor, VisualTokens, torch.Tensor]:
    """(depth -> hidden states, image-token mask, PEL grids, teacher input) for one golden PAL case."""
    input_ids = golden[f"input.{case}.input_ids"]
    features = golden[f"input.{case}.all_features"]  # (B, N, 9, 128): embeddings, layers 1-7, normed layer 8
    patch_hw = golden[f"input.{case}.patch_hw"]
    has_image = (input_ids == -200).any(dim=1)
    image_mask = torch.zeros(features.shape[:2], dtype=torch.bool)
    for row in range(input_ids.shape[0]):
        if has_image[row]:
            start = int((input_ids[row] == -200).nonzero()[0, 0])
            image_mask[row, start : start + visual_token_count(*patch_hw[row].tolist())] = True
    lengths = visual_token_count(patch_hw[:, 0], patch_hw[:, 1])
    visual = VisualTokens(torch.zeros(int(lengths.sum()), 1), lengths, patch_hw, has_image)
    mask = golden[f"input.{case}.images_clip_mask"][:, 0]
    teacher_pixels = torch.cat([torch.zeros(mask.shape[0], 3, 56, 56, dtype=torch.float64), mask[:, None]], dim=1)
    return {depth: features[:, :, depth] for depth in (8, 4, 0)}, image_mask, visual, teacher_pixels


@pytest.mark.parametrize("case, image_max_side", [("r1", 112), ("r2", 224)])
def test_pal_loss_and_gradients_match_upstream(pal_golden, case, image_max_side):
    model, upstream_of = golden_model(upstream_parameters(pal_golden), image_max_side)
    assert model.config.patch_ratio == {"r1": 1, "r2": 2}[case]
    captured, image_mask, visual, teacher_pixels = pal_inputs(pal_golden, case)
    model.teacher = StoredTeacher(pal_golden[f"input.{case}.teacher_features"])
    loss = model.alignment_loss(captured, image_mask, visual, teacher_pixels)
    assert abs(float(loss.detach()) - float(pal_golden[f"output.{case}.loss"])) < PARITY_TOLERANCE
    loss.backward()
    for name, parameter in model.aligning_layer.named_parameters():
        key = f"grad.{case}.{upstream_of['aligning_layer.' + name].removeprefix('model.')}"
        assert max_diff(parameter.grad, pal_golden[key]) < PARITY_TOLERANCE, name
    # Each sample alone gives upstream's per-sample term (the text-only sample of r1 contributes 0).
    for row, expected in enumerate(pal_golden[f"output.{case}.sample_loss"].tolist()):
        model.teacher = StoredTeacher(pal_golden[f"input.{case}.teacher_features"][row : row + 1])
        one = VisualTokens(visual.embeddings, visual.lengths[row : row + 1], visual.grid_hw[row : row + 1],
                           visual.has_image[row : row + 1])
        with torch.no_grad():
            term = model.alignment_loss({d: s[row : row + 1] for d, s in captured.items()}, image_mask[row : row + 1],
                                        one, teacher_pixels[row : row + 1])
        assert abs(float(term) - expected) < PARITY_TOLERANCE, row


# ---------------------------------------------------------------------------------------------- mapping
def test_the_mapping_round_trips_every_golden_parameter(pel_golden, pal_golden):
    upstream = {**upstream_parameters(pel_golden), **upstream_parameters(pal_golden)}
    assert len(upstream) == 23 + 13
    model_state, aligning_state, mapping = convert_state_dict(upstream)
    assert len(mapping.converted) == len(upstream) and not mapping.dropped
    back = {upstream_name(name): tensor for name, tensor in model_state.items()}
    back.update({upstream_name("aligning_layer." + name): tensor for name, tensor in aligning_state.items()})
    assert back.keys() == upstream.keys()
    assert all(torch.equal(back[name], upstream[name]) for name in upstream)
    for upstream_pattern, library_pattern in NAME_RULES:  # each rule is read both ways
        if library_pattern is not None and "{" not in upstream_pattern:
            assert upstream_name(library_name(upstream_pattern)) == upstream_pattern


def test_unknown_duplicate_missing_and_misshapen_names_are_errors(pel_golden):
    upstream = upstream_parameters(pel_golden)
    expected = {library_name(name): tuple(tensor.shape) for name, tensor in upstream.items()}
    shapes = {name: tuple(tensor.shape) for name, tensor in upstream.items()}
    with pytest.raises(UpstreamConversionError, match="unknown upstream tensor.*model.vision_tower.extra_gate"):
        map_names([*upstream, "model.vision_tower.extra_gate"], expected)
    fewer = [name for name in upstream if not name.endswith("split_embedding")]
    with pytest.raises(UpstreamConversionError, match="no upstream tensor provides.*patch_embedding.split_embedding"):
        map_names(fewer, expected)
    with pytest.raises(UpstreamConversionError, match="no parameter for"):
        map_names(list(upstream), {k: v for k, v in expected.items() if "split" not in k})
    wrong = {**shapes, "model.mm_projector.0.bias": (64,)}
    with pytest.raises(UpstreamConversionError, match="shape mismatch.*mm_projector.0.bias"):
        map_names(list(upstream), expected, wrong)
    assert map_names(["model.layers.3.self_attn.rotary_emb.inv_freq",
                      "model.vision_tower_compressor.clip_layer.vision_tower.x.weight"]).dropped.keys() == {
        "model.layers.3.self_attn.rotary_emb.inv_freq", "model.vision_tower_compressor.clip_layer.vision_tower.x.weight"}


# -------------------------------------------------------------------------------------- eve convert upstream
def write_upstream_directory(directory, pel_golden, pal_golden) -> dict:
    """An upstream-shaped EVE directory at the golden dims: golden PEL/PAL, a seeded decoder under upstream's
    Llama names, a frozen-teacher tensor and a rotary buffer (both to be dropped), the tiny tokenizer."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from eve_model.tokenizer import TINY_TOKENIZER_DIR

    config = golden_config()
    torch.manual_seed(7)
    decoder = LlamaForCausalLM(config.text_config).double()
    tensors = {**upstream_parameters(pel_golden), **upstream_parameters(pal_golden)}
    tensors.update({name: tensor.clone() for name, tensor in decoder.state_dict().items()})
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16, dtype=torch.float64)
    tensors["model.vision_tower_compressor.clip_layer.vision_tower.embeddings.weight"] = torch.ones(4, dtype=torch.float64)
    directory.mkdir(parents=True)
    names = sorted(tensors)
    save_file({name: tensors[name].contiguous() for name in names[: len(names) // 2]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({name: tensors[name].contiguous() for name in names[len(names) // 2 :]}, str(directory / "model-00002-of-00002.safetensors"))
    upstream_config = {**config.text_config.to_dict(), "model_type": "eve", "architectures": ["EVELlamaForCausalLM"],
                       "mm_vision_tower": "openai/eve-patch14-anypixel-672", "mm_projector_type": "mlp2x_gelu",
                       "requires_cliploss": True, "tokenizer_model_max_length": 2048}
    (directory / "config.json").write_text(json.dumps(upstream_config))
    for path in TINY_TOKENIZER_DIR.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return tensors


def test_eve_convert_upstream_writes_a_loadable_directory_that_round_trips(pel_golden, pal_golden, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from cli.main import main
    from eve_model.identity import file_sha256, weights_sha256
    from eve_model.processing_eve import EveProcessor
    from eve_model.training.alignment_state import load_alignment_state

    source, destination = tmp_path / "upstream", tmp_path / "converted"
    tensors = write_upstream_directory(source, pel_golden, pal_golden)
    geometry = ["--set", "image_max_side=112", "--set", "teacher_image_size=56", "--set", "teacher_grid_size=4"]
    assert main(["convert", "upstream", str(source), str(destination), *geometry]) == 0

    model = EveForCausalLM.from_pretrained(destination, dtype=torch.float64)
    assert model.config.pixel_protocol == "upstream" and model.config.image_max_side == 112
    assert model.config.alignment_depths == [8, 4, 0] and model.config.teacher_feature_dim == 64
    load_alignment_state(model, destination)
    state = {upstream_name(name): tensor for name, tensor in model.state_dict().items()}
    state.update({upstream_name("aligning_layer." + name): tensor for name, tensor in model.aligning_layer.state_dict().items()})
    kept = {name: tensor for name, tensor in tensors.items() if library_name(name) is not None}
    assert state.keys() == kept.keys()
    assert all(torch.equal(state[name], kept[name]) for name in kept)  # bit for bit, both ways
    with torch.no_grad():
        visual = model.patch_embedding(torch.stack([pel_golden[f"input.{i}"] for i in range(4)]))
    for index, tokens in enumerate(visual.split()):
        assert max_diff(tokens, pel_golden[f"output.{index}"]) < PARITY_TOLERANCE

    processor = EveProcessor.from_pretrained(destination)
    assert processor.image_processor.pixel_protocol == "upstream" and processor.max_length == 2048
    card = ModelCard.load(destination / "README.md")
    for path in source.iterdir():
        assert f"| {path.name} | `{file_sha256(path)}` |" in card.text
    assert "dropped: frozen CLIP teacher" in card.text and "dropped: rotary frequencies" in card.text
    assert weights_sha256(destination) in card.text
    assert "2 dropped" in capsys.readouterr().out

    # Refused, with the reason, and nothing written: an existing destination, a source with a stray tensor.
    assert main(["convert", "upstream", str(source), str(destination), *geometry]) == 2
    assert "not empty" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"model.vision_tower.extra_gate": torch.zeros(2)}, str(source / "zz-extra.safetensors"))
    assert main(["convert", "upstream", str(source), str(tmp_path / "again"), *geometry]) == 2
    assert "model.vision_tower.extra_gate" in capsys.readouterr().err
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.partial").exists()
