"""Named checkpoints where tests kill a run, to prove the next run repairs what it left.

`GIT_KSPLICE_FAULT=<checkpoint>` makes the process SIGKILL itself when it reaches that
checkpoint: no cleanup handler runs, exactly like `kill -9` or a power cut. Nothing else
reads the variable; it costs one dictionary lookup per checkpoint.
"""

from __future__ import annotations

import os
import signal

CHECKPOINTS = (
    "locked",  # lock taken, nothing changed yet
    "pre-created",  # refs/ksplice/pre exists
    "prebuild-started",  # the tree is marked building, make not yet run
    "prebuilt",  # pristine build and cache done
    "post-created",  # temporary commit and refs/ksplice/tmp/<ID> exist
    "patched-checkout",  # the tree holds the post commit, make not yet run
    "patched-built",  # make done, objects not yet compared
    "compared",  # diff objects made, the tree not yet reverted
    "tarball-written",  # tarball on disk, refs not yet moved
    "recorded",  # refs moved
)


def checkpoint(name: str) -> None:
    assert name in CHECKPOINTS, name
    if os.environ.get("GIT_KSPLICE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
