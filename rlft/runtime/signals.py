"""SIGTERM / SIGINT during training: finish the step in flight, write a checkpoint, exit with 128 + signal.

Pre-emptible clusters send SIGTERM and, after a grace period, SIGKILL. On the first signal rlft lets the
current step (rollout, update, or a save already under way) finish, saves a complete checkpoint of that
step and stops; `rlft train --resume` continues from it exactly. A second signal exits at once, leaving
the newest complete checkpoint as it was, even where the process inherited an ignored SIGINT (a background
job of a shell: restoring that inherited SIG_IGN would swallow the second signal, so the default action is
used instead). The grace period needed is therefore one training step plus
one save. Every process stops at the same step: the flag is reduced across processes at each step end.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
from transformers import TrainerCallback

from rlft.errors import RlftError

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(RlftError):
    """Training stopped on a signal after saving a checkpoint; the exit code is 128 + the signal number.

    Where the run can be continued, the message ends with `resume_command`: the rl stage sets its general form,
    the CLI the exact command line (its --config and every override given).
    """

    def __init__(self, message: str, signum: int, resume_command: str | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = 128 + signum
        self.signum = signum
        self.resume_command = resume_command

    def __str__(self) -> str:
        return (
            self.message
            if self.resume_command is None
            else f"{self.message}. Continue with: {self.resume_command}"
        )


class GracefulStop(TrainerCallback):
    """Turns SIGTERM / SIGINT into "save at the end of this step, then stop"."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    # ------------------------------------------------------------------------------------ handlers
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            inherited = self._previous.get(signum)
            self.uninstall()
            if inherited in (signal.SIG_IGN, None):  # ignored (or not set from Python): would swallow it
                signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        logger.warning(
            "%s received: finishing the current step, saving a checkpoint, then exiting "
            "(send it again to exit at once)",
            signal.Signals(signum).name,
        )

    # ----------------------------------------------------------------------------------- callback
    def _requested(self) -> bool:
        flag = 0.0 if self.signum is None else float(self.signum)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            tensor = torch.tensor(flag, device=self.accelerator.device)
            flag = self.accelerator.reduce(tensor, reduction="max").item()
            if self.signum is None and flag:
                self.signum = int(flag)
        return bool(flag)

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_save(self, args, state, control, **kwargs):
        if self._requested():  # the signal came during this save: it is complete, stop here
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
