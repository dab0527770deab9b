"""Token counts in the prompt's and the chunker's encoding (cl100k_base). Special tokens' text, such as
"<|endoftext|>" inside a document or a question, is ordinary text here: it is counted as it reads, never refused."""

from __future__ import annotations

from collections.abc import Sequence

import tiktoken

# Separates texts counted in one encode call. tiktoken splits its input at an allowed special token before the
# pre-tokenizer and BPE run, so no token spans it and each text's tokens are those it has alone.
_SEPARATOR = "<|endoftext|>"


def tokens(encoding: tiktoken.Encoding, text: str) -> list[int]:
    """The text's tokens, special tokens' text encoded as ordinary text."""
    return encoding.encode(text, disallowed_special=())


def token_count(encoding: tiktoken.Encoding, text: str) -> int:
    return len(tokens(encoding, text))


def token_counts(encoding: tiktoken.Encoding, texts: Sequence[str]) -> list[int]:
    """How many tokens each text has when encoded alone, from one call into tiktoken: each call releases the GIL
    and, with the API's threads busy, can wait milliseconds to get it back. A text holding the separator itself
    is counted the slow way (every text alone), since the separator inside it would split it."""
    if any(_SEPARATOR in text for text in texts):
        return [token_count(encoding, text) for text in texts]
    encoded = encoding.encode(_SEPARATOR.join(texts), allowed_special={_SEPARATOR}, disallowed_special=())
    counts = [0]
    for token in encoded:
        if token == encoding.eot_token:
            counts.append(0)
        else:
            counts[-1] += 1
    return counts
