"""WikiText tokens back to readable text: the inverse of the lm tokenizer, as far as it goes.

WikiText splits `1,000` into `1 @,@ 000` and `well-known` into `well @-@ known`, and puts a space around
every punctuation mark, `'s` and `'t`. The model sees (and `tokens` answers) those tokens; a `text`
answer joins them as a person would write them. `<eos>` (WikiText's line end) becomes a newline.
"""

from __future__ import annotations

from collections.abc import Iterable

# WikiText's in-word separators: glued to both neighbours
JOINERS = {"@-@": "-", "@,@": ",", "@.@": "."}
# glued to the word before them
CLOSERS = frozenset(".,;:!?)]}%'") | {"...", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}
# glued to the word after them
OPENERS = frozenset({"(", "[", "{", "$", "#"})


def detokenize(tokens: Iterable[str], eos: str = "<eos>") -> str:
    """Join tokens into text: no space before closing punctuation and after opening punctuation,
    WikiText's `@-@`, `@,@`, `@.@` joined into the word, double quotes paired (open, close, ...)."""
    parts: list[str] = []
    glue_next = True  # no space before the next token (start of text, after an opener or a newline)
    quote_open = False
    for token in tokens:
        if token == eos:
            parts.append("\n")
            glue_next = True
            continue
        if token in JOINERS:
            parts.append(JOINERS[token])
            glue_next = True
            continue
        if token == '"':
            quote_open = not quote_open
            glue_before, glue_after = not quote_open, quote_open
        else:
            glue_before, glue_after = token in CLOSERS, token in OPENERS
        if not (glue_next or glue_before):
            parts.append(" ")
        parts.append(token)
        glue_next = glue_after
    return "".join(parts)
