"""Named parameters for the studio's public endpoints, as Gradio's API page and ``gradio_client`` show them.

A handler that takes its form values as ``*values`` would show them as ``param_0`` ... ``param_N``, each required.
:func:`named_api` gives it a signature naming each value (Gradio reads the names from the function's signature)
with ``None`` defaults, so a script passes only what it needs (``character`` slots it does not use included).
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr


def named_api(handler, names: list[str]):
    """``handler(request, progress, *values)`` under a signature ``(request, progress=..., <names>=None...)``; it
    is called exactly as before (positionally), only its API description changes."""

    @functools.wraps(handler)
    def call(*args, **kwargs):
        return handler(*args, **kwargs)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("request", kind, annotation=gr.Request),
                  inspect.Parameter("progress", kind, default=gr.Progress())]
    parameters += [inspect.Parameter(name, kind, default=None) for name in names]
    call.__signature__ = inspect.Signature(parameters)
    call.__annotations__ = {"request": gr.Request}
    del call.__wrapped__  # the signature above, not the handler's *values
    return call
