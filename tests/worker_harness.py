"""A real worker process with an extra last stage, for crash and poison tests.

    python -m tests.worker_harness --block prepare|apply --marker FILE
    python -m tests.worker_harness --fail-prefix conv_poison
    python -m tests.worker_harness --kill-at applied:memories --marker FILE

``--kill-at``: the real worker process body (``worker.main.run_worker_process``: every stage,
checkpointer, tracing, metrics) with the pipeline's fault-injection hook set: at the named
stage boundary (``worker.pipeline.BoundaryHook``) it flushes the uncommitted rows when inside
the completing transaction, writes FILE and waits forever for the test's SIGKILL.

``--block``: the stage writes FILE once it is running (in ``prepare``: lease held, nothing
written; in ``apply``: inside the completing transaction, after the conversation and its turns
were written) and then waits forever, so the test can SIGKILL the process at that point.
``--fail-prefix``: the stage raises for conversations whose id starts with the prefix.
Only the core stages run before it unless ``--all-stages`` (the queue is under test, and the
memory engine's model load would dominate the runtime).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import crypto
from db.engine import open_database
from db.settings import get_settings
from worker.loop import WorkerLoop
from worker.main import run_worker_process
from worker.pipeline import PrepareContext, Stage, StageContext
from worker.runner import make_process_next
from worker.stages import CORE_STAGES, default_stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", choices=["prepare", "apply"])
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--fail-prefix")
    parser.add_argument("--kill-at", help="a stage boundary name, e.g. prepared:memories")
    parser.add_argument(
        "--all-stages", action="store_true", help="run the memory stages too (slower start)"
    )
    args = parser.parse_args()

    def block() -> None:
        assert args.marker is not None
        args.marker.write_text("in stage")
        while True:
            time.sleep(1)

    if args.kill_at:

        def at_boundary(name: str, session: Session | None) -> None:
            if name != args.kill_at:
                return
            if session is not None:
                session.flush()  # written but uncommitted when the kill lands
            block()

        run_worker_process(on_boundary=at_boundary)
        return

    def prepare(ctx: PrepareContext) -> Any:
        if args.block == "prepare":
            block()
        return None

    def apply(ctx: StageContext) -> None:
        if args.block == "apply":
            assert ctx.conversation is not None and ctx.turns
            ctx.session.flush()  # the effects are written (uncommitted) when the kill lands
            block()
        if args.fail_prefix and ctx.call and ctx.call.conversation_id.startswith(args.fail_prefix):
            raise RuntimeError(f"poison: {ctx.call.conversation_id}")

    settings = get_settings()
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    loop = WorkerLoop(settings=settings, db=db, process_next=lambda: False)
    base = default_stages() if args.all_stages else list(CORE_STAGES)
    stages = [*base, Stage("harness", apply=apply, prepare=prepare)]
    loop.process_next = make_process_next(
        settings, db, worker_id=loop.worker_id, stats=loop.stats, stages=stages
    )
    loop.install_signal_handlers()
    loop.run()


if __name__ == "__main__":
    main()
