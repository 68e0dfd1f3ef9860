"""RWKV-7 (placeholder while it is being written)."""

NAME = "rwkv7"
VERSION = "7"
LAYER_MATRICES: tuple[str, ...] = ()
