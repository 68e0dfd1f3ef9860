"""Reading and writing model files: torch `.pth`, safetensors, rwkv.cpp `.bin`, GGUF."""
