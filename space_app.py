"""Hugging Face Spaces entry point (``app_file`` in README.md's front matter): the studio with the Space's settings."""

from core.loading.library_notes import filter_library_notes

filter_library_notes()  # before diffusers loads: its import-time notes are not for visitors

from app.studio import build_space  # noqa: E402

demo, launch_kwargs = build_space()

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
