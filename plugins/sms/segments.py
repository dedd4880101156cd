"""How many SMS segments a text takes: GSM-7 when every character is in its
alphabet (160 in one segment, 153 per segment when split; the extension
characters count twice), else UCS-2 (70, or 67 per segment), as for Hindi."""

from __future__ import annotations

GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
           "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = set("^{}\\[~]|€\f")


def encoding(text: str) -> str:
    return "GSM-7" if all(c in GSM7 or c in GSM7_EXTENSION for c in text) else "UCS-2"


def segments(text: str) -> int:
    """Segments the text is sent as (0 for an empty text). A character is
    never split across two segments: an extension character's two GSM-7
    units, or a UCS-2 surrogate pair (an emoji), start a new segment when
    they do not fit in the current one."""
    if encoding(text) == "GSM-7":
        sizes, single, multi = [2 if c in GSM7_EXTENSION else 1 for c in text], 160, 153
    else:
        sizes, single, multi = [2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67
    total = sum(sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    count, used = 1, 0
    for size in sizes:
        if used + size > multi:
            count, used = count + 1, 0
        used += size
    return count


def describe(text: str) -> str:
    """A text's length, segments and encoding, as the previews and the outbox show them."""
    count = segments(text)
    return f"{len(text)} characters, {count} segment{'s' if count != 1 else ''} ({encoding(text)})"
