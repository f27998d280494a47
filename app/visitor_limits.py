"""A fair queue on an exposed studio: how much of the one GPU a visitor may ask for.

Checked before a job joins the queue (a Gradio validator on every GPU event, so a new GPU event is covered by
being one): at most :attr:`VisitorLimits.jobs_per_session` jobs waiting per browser session, at most
:attr:`VisitorLimits.jobs_per_address` per client address, and at most :attr:`VisitorLimits.total` visitors' jobs
in all. A request larger than :attr:`VisitorLimits.budget` (megapixels x steps x images) is refused when it runs,
before the GPU slot. The owner (and everyone on a studio that is not exposed) is never limited, and the Gradio
queue itself has no size limit, so the owner's jobs are never refused for visitors' load.

No ``from __future__ import annotations`` here: Gradio reads the ``gr.Request`` annotation at runtime.
"""

from dataclasses import dataclass

import gradio as gr

from .errors import StudioInputError

GPU_QUEUE = "gpu"  # the concurrency id of every GPU event (app.tabs.generate.GPU)


class VisitorLimitError(StudioInputError):
    """A visitor's job refused by the fair queue; one line naming the limit and the flag that sets it."""


@dataclass(frozen=True)
class VisitorLimits:
    """The owner's choices (``--visitor-jobs-per-session``, ``--visitor-jobs-per-address``, ``--visitor-budget``,
    ``--allow-visitor-downloads``)."""

    jobs_per_session: int = 2
    jobs_per_address: int = 4
    budget: float = 120.0  # megapixels x steps x images: 1024x1024, 28 steps, 4 images is 117
    total: int = 48  # visitors' waiting jobs together
    downloads: bool = False

    def check_budget(self, width: int, height: int, steps: int, images: int, what: str = "this request") -> None:
        """:class:`VisitorLimitError` when the request's :func:`cost` is over :attr:`budget`."""
        spent = cost(width, height, steps, images)
        if spent > self.budget:
            raise VisitorLimitError(
                f"{what} is {spent:,.0f} megapixel-steps ({int(width)}x{int(height)}, {int(steps)} steps, "
                f"{int(images)} image(s)): visitors of this studio may ask for at most {self.budget:,.0f} "
                "(fewer steps, images or pixels; the owner sets --visitor-budget)")

    def images_within_budget(self, width: int, height: int, steps: int, wanted: int, what: str = "one image") -> int:
        """How many of ``wanted`` images of this size fit :attr:`budget`; refuses (as :meth:`check_budget`) when not
        even one does."""
        self.check_budget(width, height, steps, 1, what)
        return max(1, min(wanted, int(self.budget // cost(width, height, steps, 1))))


def cost(width: int, height: int, steps: int, images: int) -> float:
    """A request's share of the GPU, as :attr:`VisitorLimits.budget` counts it: megapixels x steps x images."""
    return int(width) * int(height) / 1e6 * int(steps) * int(images)


def _address(request) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def waiting_gpu_jobs(demo: gr.Blocks) -> list:
    """The GPU jobs waiting in ``demo``'s queue (not the running one): Gradio's events, with ``session_hash``,
    ``username`` and ``request``. Gradio offers no public view of its queue; this is the one place that reads it."""
    queue = getattr(demo, "_queue", None)
    per_id = getattr(queue, "event_queue_per_concurrency_id", {}) or {}
    return list(getattr(per_id.get(GPU_QUEUE), "queue", []) or [])


def check_admission(demo: gr.Blocks, access, request) -> None:
    """:class:`VisitorLimitError` when a visitor's new GPU job would pass a limit of ``access.limits``."""
    if access.is_owner(request):
        return
    limits = access.limits
    visitors = [e for e in waiting_gpu_jobs(demo) if not access.is_owner(e)]
    session = getattr(request, "session_hash", None)
    mine = sum(e.session_hash == session for e in visitors)
    if mine >= limits.jobs_per_session:
        raise VisitorLimitError(f"you have {mine} job(s) waiting already: visitors of this studio may queue at most "
                                f"{limits.jobs_per_session} (wait for them or Cancel one; the owner sets "
                                "--visitor-jobs-per-session)")
    address = _address(request)
    from_address = sum(_address(e.request) == address for e in visitors) if address else 0
    if address and from_address >= limits.jobs_per_address:
        raise VisitorLimitError(f"{from_address} jobs from your address are waiting already: at most "
                                f"{limits.jobs_per_address} per address (the owner sets --visitor-jobs-per-address)")
    if len(visitors) >= limits.total:
        raise VisitorLimitError(f"the studio's queue holds {len(visitors)} visitors' jobs, its limit: try again "
                                "in a few minutes")


def install(demo: gr.Blocks, access) -> int:
    """Puts the admission check in front of every GPU event of ``demo`` (a Gradio validator: it runs when a job
    asks to join the queue, and a refusal answers the join with its one line); returns how many."""
    count = 0
    for fn in demo.fns.values():
        if fn.concurrency_id == GPU_QUEUE and fn.queue and fn.validator is None:
            fn.validator = _admission(demo, access, len(fn.inputs))
            count += 1
    return count


def _admission(demo: gr.Blocks, access, inputs: int):
    def admit(request: gr.Request, *values):
        check_admission(demo, access, request)  # Gradio answers the join with the error's text
        return [gr.validate(True, "")] * inputs  # one verdict per input, as Gradio's validators return

    return admit
