"""Bundled tiny byte-level BPE tokenizer for the ``EveConfig.tiny()`` presets.

No small pretrained tokenizer installs offline, so the tiny preset uses a byte-level BPE trained on a small
built-in English corpus (shapes, colours, counts, positions, caption and chat-template vocabulary). Being
byte-level it encodes any UTF-8 text. The trained files are committed under ``assets/tiny-tokenizer``;
``python -m eve_model.tokenizer`` regenerates them deterministically.

Special tokens (fixed ids): ``<unk>`` 0, ``<s>`` 1, ``<pad>`` ... see ``SPECIAL_TOKENS``. The tokenizer adds
``<s>`` in front like the Llama tokenizer; the EVE processor tokenizes with ``add_special_tokens=False`` and
places BOS itself.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from .constants import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-tokenizer"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]
TINY_VOCAB_SIZE = 768
"""Embedding rows of the tiny LLM (= ``EveConfig.tiny().text_config.vocab_size``) and the BPE training target;
the built-in corpus saturates slightly below it, so ``len(tokenizer) <= TINY_VOCAB_SIZE`` (rows past the
tokenizer are never produced, as in padded Llama vocabularies)."""
TINY_IMAGE_TOKEN_ID = SPECIAL_TOKENS.index(IMAGE_PLACEHOLDER)
"""Id of ``<image>`` in the bundled tokenizer (= ``EveConfig.tiny().image_token_id``)."""

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "cyan"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "ellipse", "diamond", "hexagon", "line", "cross"]
COUNTS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "several"]
POSITIONS = [
    "on the left", "on the right", "at the top", "at the bottom", "in the centre", "in the center",
    "in the top left corner", "in the top right corner", "in the bottom left corner", "in the bottom right corner",
    "above", "below", "next to", "behind", "in front of", "between",
]
SIZES = ["small", "large", "big", "tiny", "medium", "thin", "wide", "tall", "short"]
BACKGROUNDS = ["white", "black", "gray", "light", "dark", "plain", "striped", "noisy", "blue", "green"]
CAPTION_PHRASES = [
    "The image shows", "This picture contains", "A photo of", "An image of", "There is", "There are",
    "In this image we can see", "The picture depicts", "A drawing of", "A simple illustration of",
]
QUESTIONS = [
    "What colour is the {shape}?", "How many {shape}s are there?", "Where is the {colour} {shape}?",
    "What shape is {position}?", "Describe the image.", "Describe the image in detail.",
    "Is there a {colour} {shape} in the image?", "What is the background colour?",
    "Answer the question using a single word or phrase.", "Please describe this picture briefly.",
]
TEMPLATE_TEXT = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT:", "Yes", "No", "yes", "no", "I don't know.", "The answer is",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 32 64 100",
    "a an the of and with on in at to is are it this that which there these those has have",
    "digit letter number word text written printed sign logo icon photo stamp emoji picture",
    "person dog cat car tree house flower ball cup book bird fish boat sun moon cloud",
]


def tiny_corpus() -> list[str]:
    """The built-in training corpus: deterministic templated captions, questions and answers."""
    lines: list[str] = list(TEMPLATE_TEXT)
    combos = itertools.product(COLOURS, SHAPES)
    for index, (colour, shape) in enumerate(combos):
        count = COUNTS[index % len(COUNTS)]
        size = SIZES[index % len(SIZES)]
        position = POSITIONS[index % len(POSITIONS)]
        background = BACKGROUNDS[index % len(BACKGROUNDS)]
        phrase = CAPTION_PHRASES[index % len(CAPTION_PHRASES)]
        plural = "s" if count not in ("one",) else ""
        lines.append(f"{phrase} {count} {size} {colour} {shape}{plural} {position} on a {background} background.")
        lines.append(f"A {colour} {shape} {position}, and a {SIZES[(index + 3) % len(SIZES)]} "
                     f"{COLOURS[(index + 5) % len(COLOURS)]} {SHAPES[(index + 7) % len(SHAPES)]}.")
        question = QUESTIONS[index % len(QUESTIONS)].format(shape=shape, colour=colour, position=position)
        lines.append(f"USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT: The {shape} is {colour}.")
    return lines


def train_tiny_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB_SIZE) -> "PreTrainedTokenizerFast":
    """Train a byte-level BPE on ``texts`` (deterministic for a fixed input) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[IMAGE_PLACEHOLDER],
        padding_side="right",
        model_max_length=4096,
    )


def load_tiny_tokenizer() -> "PreTrainedTokenizerFast":
    """Load the committed tiny tokenizer (``<image>`` id == ``EveConfig.tiny().image_token_id``)."""
    from transformers import PreTrainedTokenizerFast

    if not (TINY_TOKENIZER_DIR / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"Bundled tokenizer missing at {TINY_TOKENIZER_DIR}; regenerate it with `python -m eve_model.tokenizer`."
        )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER_DIR))
    if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) != TINY_IMAGE_TOKEN_ID or len(tokenizer) > TINY_VOCAB_SIZE:
        raise RuntimeError(f"Bundled tokenizer at {TINY_TOKENIZER_DIR} does not match TINY_* constants; regenerate it.")
    return tokenizer


def main() -> int:
    tokenizer = train_tiny_tokenizer(tiny_corpus(), TINY_VOCAB_SIZE)
    TINY_TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(TINY_TOKENIZER_DIR))
    print(f"wrote {TINY_TOKENIZER_DIR} (vocab {len(tokenizer)}, <image> id {tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
