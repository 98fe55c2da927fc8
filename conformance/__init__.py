"""Checks refimpl and optimizers against torch; this package may import torch."""
