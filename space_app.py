"""Hugging Face Spaces entry point (``app_file`` in README.md's front matter): the studio with the Space's settings.

On ZeroGPU the ``spaces`` package must be imported before torch (and anything that imports it) so it can patch
CUDA; it is imported first here whenever it is installed (a Space installs it from requirements.txt). Elsewhere
it is absent or inert, and the studio runs the same.
"""

import importlib.util

if importlib.util.find_spec("spaces") is not None:
    import spaces  # noqa: F401  (first: before torch)

from core.loading.library_notes import filter_library_notes  # noqa: E402

filter_library_notes()  # before diffusers loads: its import-time notes are not for visitors

from app.studio import build_space  # noqa: E402

demo, launch_kwargs = build_space()

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
