"""EveImageProcessor geometry and conversions; EveProcessor templates, label masking and bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from eve_model.configuration_eve import EveConfig
from eve_model.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from eve_model.geometry import visual_token_count
from eve_model.processing_eve import EveImageProcessor, EveInputError, EveProcessor, VICUNA_V1_SYSTEM

ASPECTS = {"square": (90, 90), "landscape": (640, 480), "portrait": (480, 640), "one_to_eight": (40, 320), "tiny": (5, 3)}


@pytest.fixture(scope="module")
def processor() -> EveProcessor:
    return EveProcessor.from_eve_config(EveConfig.tiny(), max_length=256)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = mask.any(dim=1).nonzero()[:, 0]
    cols = mask.any(dim=0).nonzero()[:, 0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.parametrize("preset", ["tiny", "tiny_hd"])
@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_student_grid_equals_teacher_valid_grid(preset, aspect):
    config = getattr(EveConfig, preset)()
    image_processor = EveImageProcessor.from_eve_config(config)
    width, height = ASPECTS[aspect]
    batch = image_processor([noise_image(width, height)])
    student_mask = batch["pixel_values"][0, 3] > 0
    teacher_mask = batch["teacher_pixel_values"][0, 3] > 0
    top, bottom, left, right = mask_box(student_mask)
    # The mask is exactly one rectangle and the longest side spans the canvas (small images up-scaled).
    assert student_mask.sum() == (bottom - top) * (right - left)
    assert max(bottom - top, right - left) == config.image_max_side
    cell = config.student_cell_px
    assert top % cell == left % cell == (bottom - top) % cell == (right - left) % cell == 0
    student_grid = ((bottom - top) // cell, (right - left) // cell)
    assert tuple(batch["image_grid_hw"][0].tolist()) == student_grid
    # Teacher valid cells, computed from the teacher mask alone.
    t_top, t_bottom, t_left, t_right = mask_box(teacher_mask)
    t_cell = config.teacher_cell_px
    teacher_grid = ((t_bottom - t_top) // t_cell, (t_right - t_left) // t_cell)
    ratio = config.patch_ratio
    assert (student_grid[0] // ratio, student_grid[1] // ratio) == teacher_grid
    assert (top // (cell * ratio), left // (cell * ratio)) == (t_top // t_cell, t_left // t_cell)
    # Short side: ceil of the aspect-kept teacher-cell count (spec §2.3 step 2).
    short, long_ = min(width, height), max(width, height)
    assert min(teacher_grid) == max(1, math.ceil(config.teacher_grid_size * short / long_))


def test_padding_is_mean_colour_and_image_pixels_survive(processor):
    batch = processor.image_processor([Image.new("RGB", (200, 100), (255, 0, 0))])
    student, teacher = batch["pixel_values"][0], batch["teacher_pixel_values"][0]
    outside = student[3] == 0
    assert outside.any() and torch.allclose(student[:3][:, outside], torch.zeros(3, int(outside.sum())), atol=1e-6)
    mean = torch.tensor(processor.image_processor.image_mean)
    t_outside = teacher[3] == 0
    assert torch.allclose(teacher[:3][:, t_outside].mean(dim=1), mean, atol=1e-6)
    inside = teacher[:3][:, teacher[3] == 1]
    assert torch.allclose(inside.mean(dim=1), torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


def test_missing_image_gives_blank_mean_canvas_with_empty_mask(processor):
    batch = processor.image_processor([None])
    assert not batch["has_image"][0]
    assert batch["pixel_values"][0].abs().max() == 0
    assert batch["teacher_pixel_values"][0, 3].max() == 0
    assert batch["image_grid_hw"][0].tolist() == [0, 0]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_non_rgb_modes_are_converted(processor, mode):
    rgb = noise_image(48, 32, seed=1)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0)
    else:
        image = rgb.convert(mode)
    assert image.mode == mode
    batch = processor.image_processor([image], ["sample-x"])
    reference = processor.image_processor([rgb.convert("L").convert("RGB")])
    assert batch["has_image"][0] and torch.isfinite(batch["pixel_values"]).all()
    side = EveConfig.tiny().image_max_side
    assert batch["pixel_values"].shape == (1, 4, side, side)
    if mode in ("L", "I;16", "I", "F"):  # same grey levels whatever the storage type
        assert torch.allclose(batch["pixel_values"], reference["pixel_values"], atol=0.05)


def test_fully_transparent_pixels_become_padding_colour(processor):
    batch = processor.image_processor([Image.new("RGBA", (32, 32), (0, 0, 0, 0))])
    assert batch["pixel_values"][0, :3].abs().max() < 0.02  # normalised mean colour ~ 0


def test_zero_size_and_corrupt_images_raise_naming_the_sample(processor):
    with pytest.raises(EveInputError, match="cat-007.*zero-size"):
        processor.image_processor([Image.new("RGB", (0, 10))], ["cat-007"])
    encoded = io.BytesIO()
    noise_image(64, 64).save(encoded, format="PNG")
    truncated = encoded.getvalue()[:100]
    with pytest.raises(EveInputError, match="dog-042"):
        processor.image_processor([truncated], ["dog-042"])
    with pytest.raises(EveInputError, match="key-3"):
        processor([{"key": "key-3", "image": b"not an image at all", "caption": "x"}], "plain")


def test_plain_template_masks_everything_but_caption_and_newline(processor):
    batch = processor([{"image": noise_image(64, 48), "caption": "a red circle"}, {"image": None, "caption": "two blue squares"}], "plain")
    tokenizer = processor.tokenizer
    ids, labels = batch["input_ids"], batch["labels"]
    count = visual_token_count(*batch["image_grid_hw"][0].tolist())
    assert ids[0, 0] == tokenizer.bos_token_id and (ids[0, 1 : 1 + count] == processor.image_token_id).all()
    assert (ids[0] == processor.image_token_id).sum() == count and (labels[0, 1 : 1 + count] == IGNORE_INDEX).all()
    assert (ids[1] == processor.image_token_id).sum() == 0
    assert tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX]) == "a red circle\n"
    assert tokenizer.decode(labels[1][labels[1] != IGNORE_INDEX]) == "two blue squares\n"
    # Right padding: pad id, zero mask and ignored labels after the text.
    length = int(batch["attention_mask"][1].sum())
    assert (ids[1, length:] == tokenizer.pad_token_id).all() and (labels[1, length:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1, :length].all()


def test_vicuna_template_trains_only_assistant_turns_and_moves_image_first(processor):
    sample = {
        "image": noise_image(64, 64),
        "conversations": [
            {"from": "human", "value": "What colour is it?\n<image>"},
            {"from": "gpt", "value": "It is red."},
            {"from": "human", "value": "And the shape?"},
            {"from": "gpt", "value": "A circle."},
        ],
    }
    batch = processor([sample], "vicuna_v1")
    tokenizer = processor.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    text = tokenizer.decode(ids)
    visual_block = IMAGE_PLACEHOLDER * visual_token_count(*batch["image_grid_hw"][0].tolist())  # 3x3 grid: 13
    assert text == (f"<s>{VICUNA_V1_SYSTEM} USER: {visual_block}\nWhat colour is it? ASSISTANT: It is red.</s>"
                    "USER: And the shape? ASSISTANT: A circle.</s>")
    targets = ids[labels != IGNORE_INDEX]
    assert tokenizer.decode(targets) == " It is red.</s> A circle.</s>"
    assert (labels[ids == tokenizer.eos_token_id] != IGNORE_INDEX).all()  # assistant EOS is trained


def test_two_placeholders_or_placeholder_without_image_raise(processor):
    two = {"key": "dup-1", "image": noise_image(32, 32), "conversations": [
        {"from": "human", "value": "<image>\n<image> what?"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(EveInputError, match="dup-1.*2 <image>"):
        processor([two], "vicuna_v1")
    orphan = {"key": "txt-9", "image": None, "conversations": [
        {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(EveInputError, match="txt-9"):
        processor([orphan], "vicuna_v1")
    with pytest.raises(EveInputError, match="cap-2"):
        processor([{"key": "cap-2", "image": noise_image(32, 32), "caption": "look <image>"}], "plain")


def test_max_length_limits_the_text_and_the_visual_block_is_expanded_after_truncation():
    """The default follows upstream: ``input_ids`` (one <image> placeholder) are cut to max_length first."""
    config = EveConfig.tiny()
    caption = "a red circle on the left and a blue square on the right " * 4
    image = noise_image(64, 64)  # 3x3 grid -> 1 + 3 * 4 = 13 visual tokens
    visual = visual_token_count(3, 3)
    processor = EveProcessor.from_eve_config(config, max_length=20)
    batch = processor([{"image": image, "caption": caption}, {"image": None, "caption": caption}], "plain")
    # Image row: BOS + <image> + 18 caption tokens = 20 text tokens, then the placeholder becomes 13 tokens.
    assert batch["attention_mask"][0].sum() == 20 - 1 + visual
    assert (batch["input_ids"][0, 1 : 1 + visual] == processor.image_token_id).all()
    assert (batch["labels"][0, 1 + visual : 20 - 1 + visual] != IGNORE_INDEX).all()  # 18 caption tokens kept
    # A text-only row is cut to max_length like any text.
    assert batch["attention_mask"][1].sum() == 20
    placeholder_cut = EveProcessor.from_eve_config(config, max_length=1)
    with pytest.raises(EveInputError, match="late-1: its <image> is at text position 1, past max_length 1"):
        placeholder_cut([{"key": "late-1", "image": image, "caption": caption}], "plain")


def test_max_length_can_count_the_visual_tokens_and_then_never_cuts_the_visual_block():
    config = EveConfig.tiny()
    caption = "a red circle on the left and a blue square on the right " * 4
    image = noise_image(64, 64)  # 13 visual tokens
    visual = visual_token_count(3, 3)
    processor = EveProcessor.from_eve_config(config, max_length=30, max_length_counts_visual_tokens=True)
    batch = processor([{"image": image, "caption": caption}], "plain")
    # BOS + 13 image tokens + 16 caption tokens.
    assert batch["input_ids"].shape == batch["labels"].shape == (1, 30)
    assert (batch["input_ids"][0] == processor.image_token_id).sum() == visual
    assert (batch["input_ids"][0, 1 : 1 + visual] == processor.image_token_id).all()
    assert (batch["labels"][0, 1 + visual :] != IGNORE_INDEX).all()  # the caption, truncated
    exact = EveProcessor.from_eve_config(config, max_length=1 + visual, max_length_counts_visual_tokens=True)
    assert exact([{"image": image, "caption": caption}], "plain")["input_ids"].shape == (1, 1 + visual)
    too_short = EveProcessor.from_eve_config(config, max_length=visual, max_length_counts_visual_tokens=True)
    with pytest.raises(EveInputError, match="big-1: the 13 visual tokens at position 1 do not fit max_length 13"):
        too_short([{"key": "big-1", "image": image, "caption": caption}], "plain")


def test_upstream_pixel_protocol_pads_with_int_mean_and_drops_alpha():
    platform = EveImageProcessor.from_eve_config(EveConfig.tiny())
    upstream = EveImageProcessor.from_eve_config(EveConfig.tiny(pixel_protocol="upstream"))
    pixels = np.zeros((40, 80, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red where visible, and under the fully transparent half
    pixels[:, :40, 3] = 255
    image = Image.fromarray(pixels, mode="RGBA")
    mine, theirs = platform([image]), upstream([image])
    assert torch.equal(mine["image_grid_hw"], theirs["image_grid_hw"])
    assert torch.equal(mine["teacher_pixel_values"][:, 3], theirs["teacher_pixel_values"][:, 3])  # same masks
    padding = theirs["teacher_pixel_values"][0, :3, -1, -1]  # a canvas pixel below the landscape image
    assert torch.equal(padding * 255, torch.tensor([122.0, 116.0, 104.0]))  # int(CLIP mean * 255)
    assert torch.allclose(mine["teacher_pixel_values"][0, :3, -1, -1], torch.tensor(EveConfig.tiny().image_mean))
    assert mine["pixel_values"][0, :3, -1, -1].abs().max() < 1e-6  # exact mean normalises to 0
    # Transparent pixels: composited onto the padding colour (platform) vs their hidden RGB (upstream).
    row = int(theirs["teacher_pixel_values"][0, 3].nonzero()[0, 0])  # first image row on the teacher canvas
    assert theirs["teacher_pixel_values"][0, 0, row, -1] > 0.7 and theirs["teacher_pixel_values"][0, 1, row, -1] == 0
    assert torch.allclose(mine["teacher_pixel_values"][0, :3, row, -1], torch.tensor(EveConfig.tiny().image_mean), atol=0.01)
    with pytest.raises(ValueError, match="pixel_protocol"):
        EveConfig.tiny(pixel_protocol="llava")


def test_generation_batch_is_left_padded_and_prompt_has_template(processor):
    prompts = [processor.prompt("What is this?"), processor.prompt("Say hi", with_image=False)]
    batch = processor.for_generation([noise_image(40, 40), None], prompts)
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]
    count = visual_token_count(*batch["image_grid_hw"][0].tolist())
    image_positions = (batch["input_ids"][0] == processor.image_token_id).nonzero()[:, 0]
    assert image_positions.numel() == count and image_positions[-1] - image_positions[0] == count - 1  # one block
    assert (batch["input_ids"][1] == processor.image_token_id).sum() == 0
    padding = int((batch["attention_mask"][1] == 0).sum())  # left padding: the text row is shorter by the block
    assert (batch["input_ids"][1, :padding] == processor.pad_token_id).all() and batch["attention_mask"][1, padding:].all()
    assert prompts[0] == f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert processor.decode(batch["input_ids"][0]) == f"{VICUNA_V1_SYSTEM} USER: \nWhat is this? ASSISTANT:"
    with pytest.raises(EveInputError):
        processor.for_generation([None], [processor.prompt("x")])


def test_save_and_load_give_identical_batches(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = EveProcessor.from_pretrained(tmp_path)
    sample = [{"image": noise_image(70, 30), "caption": "three green stars"}]
    first, second = processor(sample, "plain"), loaded(sample, "plain")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
