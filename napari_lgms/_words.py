"""Counting things in messages: "1 image", "3 images", never "image(s)"."""
from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``word`` for one, else ``many`` (default: ``word`` + "s")."""
    return word if count == 1 else (many or word + "s")


def counted(count: int, word: str, many: str | None = None) -> str:
    """``count`` and the word in its form for that count: ``counted(1, "image")`` -> "1 image"."""
    return f"{count} {plural(count, word, many)}"
