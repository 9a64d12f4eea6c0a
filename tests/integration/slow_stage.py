"""Run by tests/integration/test_group_timeout.py under torchrun: a stage that keeps rank 0 busy alone for
SLOW seconds with a process-group timeout of TIMEOUT seconds, then a collective.

``python slow_stage.py barrier|store TIMEOUT SLOW``: ``barrier`` waits as tokenclean did before (accelerate's
``main_process_first``, a barrier), ``store`` as it does now (:func:`tokenclean.runtime.rank_zero_first`).
"""

from __future__ import annotations

import sys
import time

from tokenclean import runtime

mode, timeout_s, slow_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runtime.set_group_timeout(timeout_s)


def stage() -> str:
    if runtime.launched_world()[0] == 0:
        time.sleep(slow_s)  # rank 0's work alone, longer than the group timeout
    return "ok"


group = runtime.process_group(cpu=True)
if mode == "barrier":  # the old rank_zero_first: accelerate's main_process_first (a barrier)
    with group.main_process_first():
        stage()
else:
    runtime.rank_zero_first(stage)()
group.wait_for_everyone()  # a collective after the stage: every rank is there within the timeout
print(f"rank {group.process_index} finished", flush=True)
