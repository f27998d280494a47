"""Counted nouns in the studio's and the CLI's messages ("1 character", "2 characters")."""


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, plural unless the number is 1 (``plural`` when the noun does not just take an s)."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"
