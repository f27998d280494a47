"""Reading a story file: the JSON form (``.json``, `core.story.parse_json`) or the text form
(`core.story.parse_text`)."""

from __future__ import annotations

import json
import os

from core.io.path_policy import UNRESTRICTED, PathNotAllowedError, PathPolicy
from core.limits import MAX_STORY_BYTES
from core.story.model import Story, StoryError
from core.story.parse_checks import clip
from core.story.parse_json import story_from_dict
from core.story.parse_text import parse_story


def load_story(path: str | os.PathLike, paths: PathPolicy = UNRESTRICTED) -> Story:
    """Read a story file: JSON (``.json``) or the text format. Image paths are relative to the file.

    The file and its character images must be allowed by `paths`; a file over MAX_STORY_BYTES is not read.
    """
    try:
        path = paths.resolve(path, what="story")
    except PathNotAllowedError as exc:
        raise StoryError(str(exc), source=str(path)) from None
    try:
        size = path.stat().st_size
        if size > MAX_STORY_BYTES:
            raise StoryError(f"story {path} is {size:,} bytes: the limit is {MAX_STORY_BYTES:,} bytes",
                             source=str(path))
        with open(path, "rb") as handle:
            data = handle.read(MAX_STORY_BYTES + 1)
    except OSError as exc:
        raise StoryError(f"cannot read story {path}: {exc.strerror or exc}", source=str(path)) from None
    if len(data) > MAX_STORY_BYTES:  # it grew after the stat
        raise StoryError(f"story {path} is over the limit of {MAX_STORY_BYTES:,} bytes", source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoryError(f"story {path} is not UTF-8 text (byte {exc.start})", source=str(path)) from None
    if path.suffix.lower() == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoryError([(exc.lineno, f"bad JSON: {exc.msg}")], source=str(path)) from None
        except (ValueError, RecursionError) as exc:  # a number too long to convert, or nesting too deep
            raise StoryError(f"bad JSON: {clip(str(exc) or type(exc).__name__)}", source=str(path)) from None
        return story_from_dict(loaded, base_dir=path.parent, source=path, paths=paths)
    return parse_story(text, base_dir=path.parent, source=path, paths=paths)
