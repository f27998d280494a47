"""What the studio says: its own launch lines (``--share``, not Gradio's ``share=True`` hint), and a Settings tab
that does not tell a user already on the tiny models to use them."""

from __future__ import annotations

from app.context import NO_GPU_NOTICE, StudioContext, StudioSettings
from app.studio import launch_messages
from app.tabs.settings import machine_text


def test_launch_messages_name_our_share_option():
    local = launch_messages("http://127.0.0.1:7860/", None, share=False)
    assert local[0].startswith("InstantCharacter Studio is running at http://127.0.0.1:7860/")
    assert "--share" in local[1] and "share=True" not in " ".join(local)
    shared = launch_messages("http://127.0.0.1:7860/", "https://abc.gradio.live", share=True)
    assert shared[1] == "public link (for about a week): https://abc.gradio.live"
    failed = launch_messages("http://127.0.0.1:7860/", None, share=True)
    assert "no public link could be made" in failed[1]


def test_settings_does_not_send_a_tiny_user_to_the_tiny_models(tiny_models, tmp_path, monkeypatch):
    import core.loading.memory as memory

    class NoGpu:
        vram_total_bytes = None
        ram_total_bytes = 16 * memory.GiB
        gpu_name = None

    monkeypatch.setattr(memory, "detect_memory", lambda *a, **k: NoGpu())
    tiny = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path))
    assert machine_text(tiny) == "No CUDA GPU found (16 GiB RAM): the tiny test models run on the CPU."
    assert "--models tiny" not in machine_text(tiny)
    real = StudioContext(StudioSettings(models="default", output_dir=tmp_path))
    assert NO_GPU_NOTICE in machine_text(real)
