"""Stories: a hand-written sequence of panels with recurring characters, rendered, laid out and exported.

`model` holds the story's dataclasses; `parse_text` and `parse_json` read its two forms (see FORMAT.md) through
`parse_header` (the header, one validator for both) and `parse_checks`, and `load` reads a file of either form;
`regions` reads where characters stand; `settings` is a panel's settings hash; `manifest` records what is rendered,
`edit` a panel's edits, `render` drives the engine resumably; `geometry` places panels on pages, `drawing` draws
them; `export` writes page PNGs, a PDF and a ZIP.
"""

from core.story.load import load_story
from core.story.model import Dialogue, Panel, Story, StoryCharacter, StoryError, derive_panel_seed
from core.story.parse_json import story_from_dict
from core.story.parse_text import parse_story
from core.story.settings import panel_settings, panel_settings_hash

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
