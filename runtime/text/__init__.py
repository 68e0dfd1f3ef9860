"""Text in, text out: tokenizers, streaming UTF-8 decode, sampling and prompt templates."""
