"""``python -m tests.trainer.held_run STEP CONFIG [options]``: ``python -m trainer CONFIG [options]`` that, once it has
logged step STEP, waits there until it is asked to stop (Ctrl-C) or is killed.

The tests that interrupt a run "mid-way" use it so that where the run stops does not depend on the machine's speed:
a plain run may finish before a fast machine's test sees the step, or be killed before a slow one's reaches it.
Under torchrun every rank waits there until killed.
"""

import sys
import time

from trainer.cli import main
from trainer.loop import Trainer

HOLD_AT = int(sys.argv.pop(1))
_requests = Trainer._requests


def _held_requests(self):
    """Called once per optimizer step, after the step's event is written: waits at step HOLD_AT."""
    if len(self.losses) == HOLD_AT:
        while not self.stop_asked:
            time.sleep(0.01)
    return _requests(self)


Trainer._requests = _held_requests
sys.exit(main())
