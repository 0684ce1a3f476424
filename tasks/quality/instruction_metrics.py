"""Per-conversation metrics of instruction (stage 3 SFT) data, the table the GX instruction suite validates.

A LLaVA-style conversation is a list of {"from": "human"|"gpt", "value": str}. Columns:

    key, num_turns                        sample key, number of messages (0 when missing or malformed)
    is_well_formed                        a list of dicts with string "from"/"value" and known roles
    roles_alternate                       starts with human, alternates human/gpt, ends with gpt
    num_image_placeholders                "<image>" occurrences over all messages
    expected_image_placeholders           1 when the sample has an image, else 0
    image_placeholder_in_first_turn       the placeholder (if any) is in the first human message
    has_empty_turn                        a message whose text is blank
    has_repeated_turn                     the same (role, text) twice in one conversation
    min_answer_words, max_answer_words    over gpt messages (0 when there are none)
    conversation_hash, is_duplicate_conversation   exact repeat of an earlier conversation (0/1)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from eve_model.constants import IMAGE_PLACEHOLDER

ROLES = ("human", "gpt")


def _conversation_row(conversation: Any, has_image: bool, image_hash: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "num_turns": 0,
        "is_well_formed": False,
        "roles_alternate": False,
        "num_image_placeholders": 0,
        "expected_image_placeholders": int(has_image),
        "image_placeholder_in_first_turn": not has_image,
        "has_empty_turn": False,
        "has_repeated_turn": False,
        "min_answer_words": 0,
        "max_answer_words": 0,
        "conversation_hash": "",
    }
    if not isinstance(conversation, list) or not all(
        isinstance(turn, dict)
        and turn.get("from") in ROLES
        and isinstance(turn.get("value"), str)
        for turn in conversation
    ):
        return row
    roles = [turn["from"] for turn in conversation]
    values = [turn["value"] for turn in conversation]
    answer_lengths = [len(value.split()) for role, value in zip(roles, values) if role == "gpt"]
    placeholder_counts = [value.count(IMAGE_PLACEHOLDER) for value in values]
    pairs = [(role, value.strip()) for role, value in zip(roles, values)]
    row.update(
        num_turns=len(conversation),
        is_well_formed=True,
        roles_alternate=bool(conversation)
        and len(conversation) % 2 == 0
        and all(role == ROLES[i % 2] for i, role in enumerate(roles)),
        num_image_placeholders=sum(placeholder_counts),
        image_placeholder_in_first_turn=(
            bool(placeholder_counts) and placeholder_counts[0] == sum(placeholder_counts)
        ),
        has_empty_turn=any(not value.replace(IMAGE_PLACEHOLDER, "").strip() for value in values),
        has_repeated_turn=len(set(pairs)) != len(pairs),
        min_answer_words=min(answer_lengths, default=0),
        max_answer_words=max(answer_lengths, default=0),
        # The same question and answer about a different image is new training signal, not a
        # duplicate: the image is part of the conversation's identity.
        conversation_hash=hashlib.sha1(
            json.dumps([image_hash, pairs], ensure_ascii=False).encode("utf-8")
        ).hexdigest(),
    )
    return row


def compute_instruction_metrics(
    keys: Sequence[str],
    conversations: Sequence[Any],
    has_image: Sequence[bool],
    image_hashes: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The metrics table, one row per conversation in input order.

    ``image_hashes`` (e.g. each sample's ``image_sha256``) make a conversation a duplicate only
    when it repeats about the same image.
    """
    image_hashes = list(image_hashes) if image_hashes is not None else [None] * len(keys)
    if not len(keys) == len(conversations) == len(has_image) == len(image_hashes):
        raise ValueError("keys, conversations, has_image and image_hashes must have the same length")
    rows = [_conversation_row(c, bool(h), i) for c, h, i in zip(conversations, has_image, image_hashes)]
    table = pd.DataFrame(rows, columns=list(_conversation_row(None, False).keys()))
    table.insert(0, "key", pd.Series(list(keys), dtype="string"))
    hashes = table["conversation_hash"]
    table["is_duplicate_conversation"] = (
        (hashes.duplicated(keep="first") & (hashes != "")).astype(np.int64)
    )
    for column in ("is_well_formed", "roles_alternate", "image_placeholder_in_first_turn",
                   "has_empty_turn", "has_repeated_turn"):
        table[column] = table[column].astype(bool)
    return table


def summarize_instruction_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Dataset-level statistics of an instruction metrics table."""
    if table.empty:
        return {"num_conversations": 0}
    return {
        "num_conversations": int(len(table)),
        "mean_turns": float(table["num_turns"].mean()),
        "well_formed_rate": float(table["is_well_formed"].mean()),
        "alternating_rate": float(table["roles_alternate"].mean()),
        "placeholder_mismatch_rate": float(
            (table["num_image_placeholders"] != table["expected_image_placeholders"]).mean()
        ),
        "empty_turn_rate": float(table["has_empty_turn"].mean()),
        "repeated_turn_rate": float(table["has_repeated_turn"].mean()),
        "mean_max_answer_words": float(table["max_answer_words"].mean()),
        "duplicate_conversation_rate": float(table["is_duplicate_conversation"].mean()),
    }


__all__ = ["compute_instruction_metrics", "summarize_instruction_metrics"]
