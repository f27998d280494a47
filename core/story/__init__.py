"""Stories: a hand-written sequence of panels with recurring characters, rendered, laid out and exported.

`format` parses the story text (see FORMAT.md), `manifest` records what is rendered, `render` drives the
engine resumably, `layout` draws pages, `export` writes page PNGs, a PDF and a ZIP.
"""

from core.story.format import (
    Dialogue,
    Panel,
    Story,
    StoryCharacter,
    StoryError,
    derive_panel_seed,
    load_story,
    panel_settings,
    panel_settings_hash,
    parse_story,
    story_from_dict,
)

__all__ = [
    "Dialogue",
    "Panel",
    "Story",
    "StoryCharacter",
    "StoryError",
    "derive_panel_seed",
    "load_story",
    "panel_settings",
    "panel_settings_hash",
    "parse_story",
    "story_from_dict",
]
