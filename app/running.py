"""One tab's runs per browser session: Cancel stops a running job at its next denoising step, drops one still
waiting in the queue, and the page shows "Cancelling..." until the job is over.

A run goes ``queued`` (the click, before the queue) -> ``started`` (the handler, holding the studio's cancel event
from :class:`app.context.JobControl`) -> ``finished``. The queue is never asked to kill a running handler: the
handler returns on its own one step after Cancel, so the GPU slot is free for the next job at once.
"""

from __future__ import annotations

import threading
import time

import gradio as gr

CANCEL_LABEL = "Cancel"
CANCELLING_LABEL = "Cancelling..."
# Cancel is answered outside the queue (at once, even while the queue is busy), where gr.Info never reaches the
# page: what happened is said on the button itself, for NOTHING_SHOWN_S
NOTHING_LABEL = "Nothing to cancel: it had finished"
NOTHING_SHOWN_S = 2.0
WAIT_LIMIT_S = 600.0  # "Cancelling..." gives way after this long whatever happens


class SessionRuns:
    """The runs of one tab, by session."""

    def __init__(self, jobs):
        self.jobs = jobs
        self._lock = threading.Lock()
        self._queued: dict[str, bool] = {}  # session -> cancelled while waiting
        self._done: dict[str, threading.Event] = {}
        self._nothing: set[str] = set()  # sessions whose last Cancel found nothing running

    def queued(self, session: str) -> None:
        with self._lock:
            self._queued[session] = False

    def start(self, session: str) -> threading.Event | None:
        """The run's cancel event; ``None`` when Cancel came while it was still waiting in the queue."""
        with self._lock:
            if self._queued.pop(session, False):
                return None
            self._done[session] = threading.Event()
        return self.jobs.start(session)

    def finish(self, session: str, cancel: threading.Event | None) -> None:
        if cancel is not None:
            self.jobs.finish(session, cancel)
        with self._lock:
            done = self._done.pop(session, None)
        if done is not None:
            done.set()

    def cancel(self, session: str) -> str:
        """``"running"`` (stops at the next step), ``"queued"`` (dropped when its turn comes) or ``"idle"``."""
        if self.jobs.cancel(session):
            return "running"
        with self._lock:
            if session in self._queued:
                self._queued[session] = True
                return "queued"
            self._nothing.add(session)
        return "idle"

    def wait(self, session: str, timeout: float = WAIT_LIMIT_S) -> None:
        with self._lock:
            done = self._done.get(session)
            nothing = session in self._nothing
            self._nothing.discard(session)
        if done is not None:
            done.wait(timeout)
        elif nothing:
            time.sleep(NOTHING_SHOWN_S)  # the button says "Nothing to cancel" this long


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or "local"


def cancelling_button(state: str):
    """The Cancel button after a press: "Cancelling..." while something stops, as it was otherwise."""
    if state == "idle":
        gr.Info("Nothing is running in this tab")  # reaches the page where Cancel is queued
        return gr.update(value=NOTHING_LABEL, interactive=False)
    gr.Info("Cancelling: stops at the next step" if state == "running" else "Cancelled before it started")
    return gr.update(value=CANCELLING_LABEL, interactive=False)


def cancel_button():
    """The Cancel button as it is when nothing is being cancelled."""
    return gr.update(value=CANCEL_LABEL, interactive=True)
