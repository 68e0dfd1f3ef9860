"""The RWKV model: loading a file, the compiled forward pass, and the recurrent state."""
