"""ggml weight types and their block layouts: quantize and dequantize with numpy (load time only)."""
