"""UTF-8 at the edges of a tokenizer: streaming decode of token bytes, and text to bytes that never fails.

A token may end in the middle of a character (World and GPT-NeoX both have tokens that are pieces of
a multi-byte sequence), so streamed text is decoded incrementally:

    dec = tokenizer.stream_decoder()
    for token_id in generated:
        show(dec.feed(token_id))      # only complete characters; a split character waits
    show(dec.flush())                 # whatever is left; an unfinished sequence becomes U+FFFD

Bytes that cannot begin or continue a valid sequence come out at once as U+FFFD (one per maximal
invalid subpart, as `bytes.decode("utf-8", "replace")` does), so the output of any split of a byte
string is exactly its one-shot decode and nothing waits longer than the 3 bytes of a valid prefix.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

_SURROGATE_HANDLER = "runtime.text.surrogates"


def _surrogates_to_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode error handler: U+DC80..U+DCFF (Python's surrogateescape) back to the raw byte,
    any other lone surrogate to the UTF-8 of U+FFFD."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        out += bytes([cp - 0xDC00]) if 0xDC80 <= cp <= 0xDCFF else "\ufffd".encode()
    return bytes(out), exc.end


codecs.register_error(_SURROGATE_HANDLER, _surrogates_to_bytes)


def text_to_utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`. Never fails: lone surrogates that Python's `surrogateescape` made from
    undecodable input bytes become those bytes again; other lone surrogates become U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", _SURROGATE_HANDLER)


def replace_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (for APIs that only accept valid text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


class Utf8StreamDecoder:
    """Bytes in, complete characters out; holds at most the 3 bytes of an unfinished sequence."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed_bytes(self, data: bytes) -> str:
        """Text completed by `data` (possibly empty)."""
        return self._decoder.decode(data, final=False)

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished sequence, waiting for the rest."""
        return self._decoder.getstate()[0]

    def flush(self) -> str:
        """End of stream: what is still held, as U+FFFD if any. The decoder can then be reused."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class StreamDecoder(Utf8StreamDecoder):
    """Token ids in, complete characters out (`feed(token_id) -> str`, `flush() -> str`)."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        super().__init__()
        self._token_bytes = token_bytes

    def feed(self, token_id: int) -> str:
        """Text completed by this token; ValueError for an id outside the vocabulary."""
        return self.feed_bytes(self._token_bytes(token_id))
