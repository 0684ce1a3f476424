"""Shared fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_eve_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised EVE model directory (model + processor), as training saves it."""
    from eve_model import EveConfig, EveForCausalLM, EveImageProcessor, EveProcessor
    from eve_model.tokenizer import load_tiny_tokenizer

    directory = tmp_path_factory.mktemp("tiny-eve")
    config = EveConfig.tiny()
    EveForCausalLM(config).save_pretrained(directory)
    EveProcessor(EveImageProcessor.from_eve_config(config), load_tiny_tokenizer(), 512).save_pretrained(directory)
    return directory
