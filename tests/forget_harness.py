"""A real worker process that pauses in ``prepare`` until the test says go (forget races).

    python -m tests.forget_harness --marker FILE --go FILE

The core stages plus one ``gate`` stage: its ``prepare`` runs with the event claimed and the
lease held (extended in the background), writes FILE ``--marker`` and waits until ``--go``
exists. The test forgets the user in between, so the job was claimed before the forget and
reaches its completing transaction after it. Lease expiry is the test's business (it backdates
``locked_until`` in SQL), never a sleep.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from db import crypto
from db.engine import open_database
from db.settings import get_settings
from worker.loop import WorkerLoop
from worker.pipeline import PrepareContext, Stage
from worker.runner import make_process_next
from worker.stages import CORE_STAGES

GO_TIMEOUT_SECS = 120.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marker", type=Path, required=True)
    parser.add_argument("--go", type=Path, required=True)
    args = parser.parse_args()

    def gate(ctx: PrepareContext) -> Any:
        args.marker.write_text(str(ctx.job.id))
        deadline = time.monotonic() + GO_TIMEOUT_SECS
        while not args.go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None

    settings = get_settings()
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    loop = WorkerLoop(settings=settings, db=db, process_next=lambda: False)
    stages = [*CORE_STAGES, Stage("gate", prepare=gate)]
    loop.process_next = make_process_next(
        settings, db, worker_id=loop.worker_id, stats=loop.stats, stages=stages
    )
    loop.install_signal_handlers()
    loop.run()


if __name__ == "__main__":
    main()
