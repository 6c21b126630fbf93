"""Test helper, run under torchrun: ``sparekit capture`` where rank ``CRASH_RANK`` dies abruptly
(``os._exit``, like a killed process) when it starts its second shard."""

import os
import sys

from sparekit.activations import store
from sparekit.cli.main import main

if os.environ.get("RANK") == os.environ.get("CRASH_RANK"):
    real, started = store._run_chunk, []

    def dies_on_second_shard(*args):
        if started:
            os._exit(3)
        started.append(True)
        return real(*args)

    store._run_chunk = dies_on_second_shard
sys.exit(main(sys.argv[1:]))
