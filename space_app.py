"""Hugging Face Spaces entry point (``app_file`` in README.md's front matter): the studio with the Space's settings."""

from app.studio import build_space

demo, launch_kwargs = build_space()

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
