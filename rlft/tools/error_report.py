"""How `rlft` reports an error that ends a command: one line on stderr and an exit code; `--debug` adds the traceback.

* An `RlftError` (bad config, env failures above the threshold, out of memory, ...) is printed as it is, with its
  own exit code.
* Any other exception that the user's code raised (the env, renderer, parser, a reward rule: whatever the config
  names as `module:function`) becomes a `UserCodeError` line naming the function and its `file:line`
  (`rlft.runtime.user_code.describe_exception`), exit code 6, instead of a traceback through rlft, TRL and torch.
* An exception raised by rlft or a library itself is a bug: it is re-raised, traceback and all.
"""

from __future__ import annotations

import sys
import traceback
from typing import TextIO

from rlft.config.schema import Config
from rlft.errors import RlftError, UserCodeError
from rlft.runtime.user_code import describe_exception, user_roles

PREFIX = "rlft: error: "


def report_error(
    exc: Exception, config: Config | None, debug: bool = False, stream: TextIO | None = None
) -> int | None:
    """Print `exc` as one `rlft: error:` line (after its traceback with `debug`) and return the exit code.

    Args:
        exc: the exception that ended the command.
        config: the command's config when it had loaded (its `module:function` keys name the user's code).
        debug: print the traceback first (`--debug`).
        stream: where to print; stderr by default.

    Returns:
        The exit code, or None when `exc` is neither an `RlftError` nor raised by the user's code: the caller
        re-raises it.
    """
    stream = stream if stream is not None else sys.stderr
    if isinstance(exc, RlftError):
        message, code = str(exc), exc.exit_code
    else:
        roles = user_roles(config.model_dump()) if config is not None else {}
        message = describe_exception(exc, roles)
        if message is None:
            return None
        hint = "" if debug else " (run with --debug for the traceback)"
        message, code = f"{message}{hint}", UserCodeError.exit_code
    if debug:
        traceback.print_exception(exc, file=stream)
    print(f"{PREFIX}{message}", file=stream)
    return code
