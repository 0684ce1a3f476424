"""Numerical references: upstream EVE v1 golden tensors and the committed golden loss curves."""
