"""Constants shared by the EVE processor, model and training code."""

IGNORE_INDEX = -100
"""Label value that cross-entropy skips (visual tokens, prompts, padding)."""

IMAGE_PLACEHOLDER = "<image>"
"""The single text placeholder where a sample's visual tokens are spliced in."""
