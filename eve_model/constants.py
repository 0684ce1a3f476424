"""Constants shared by the EVE processor, model and training code."""

IGNORE_INDEX = -100
"""Label value that cross-entropy skips (visual tokens, prompts, padding)."""

IMAGE_PLACEHOLDER = "<image>"
"""The text placeholder of an image in prompts and conversations; the processor expands it into the
image tokens that the model fills with the PEL output."""
