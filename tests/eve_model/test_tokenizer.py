"""The bundled tiny tokenizer: fixed special ids, byte-level coverage, deterministic regeneration."""

from __future__ import annotations

import json

from eve_model.tokenizer import TINY_TOKENIZER_DIR, load_tiny_tokenizer, tiny_corpus, train_tiny_tokenizer


def test_special_tokens_have_fixed_ids():
    tokenizer = load_tiny_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<unk>", "<s>", "</s>", "<pad>", "<image>"]}
    assert ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4}
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 3)
    assert tokenizer("a red circle").input_ids[0] == 1  # BOS added like the Llama tokenizer


def test_image_placeholder_is_one_token_and_any_text_round_trips():
    tokenizer = load_tiny_tokenizer()
    ids = tokenizer("USER: <image>\nWhat colour is the star? ASSISTANT:", add_special_tokens=False).input_ids
    assert ids.count(4) == 1
    text = "Ünïcödé 字 emoji 🙂 and <b>markup</b> 123"  # byte-level: nothing becomes <unk>
    encoded = tokenizer(text, add_special_tokens=False).input_ids
    assert 0 not in encoded
    assert tokenizer.decode(encoded) == text


def test_caption_vocabulary_compresses_well():
    tokenizer = load_tiny_tokenizer()
    caption = "There are three small red circles on the left on a white background."
    assert len(tokenizer(caption, add_special_tokens=False).input_ids) <= len(caption.split()) + 4


def test_regeneration_is_deterministic_and_matches_committed_assets():
    committed = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    retrained = json.loads(train_tiny_tokenizer(tiny_corpus())._tokenizer.to_str())
    assert retrained["model"]["vocab"] == committed["model"]["vocab"]
    assert retrained["model"]["merges"] == committed["model"]["merges"]
