"""Queue and task names, in one place."""

from __future__ import annotations

QUEUE_INGEST = "ingest"
QUEUE_ANALYZE = "analyze"
QUEUE_MAINTENANCE = "maintenance"
ALL_QUEUES = (QUEUE_INGEST, QUEUE_ANALYZE, QUEUE_MAINTENANCE)

TASK_PREPARE_ASSET = "orchestrator.prepare_asset"
TASK_PLAN_JOB = "orchestrator.plan_job"
TASK_ANALYZE_BATCH = "orchestrator.analyze_batch"
TASK_FINALIZE_JOB = "orchestrator.finalize_job"
TASK_REAP = "orchestrator.reap"
TASK_SCHEDULER_TICK = "orchestrator.scheduler_tick"
TASK_RECONCILE = "orchestrator.reconcile"
TASK_WRITEBACK = "orchestrator.writeback"
# The reconciler lists every instance; once per this many seconds is enough to catch orphans and vanished rows.
RECONCILE_INTERVAL_S = 30.0

# Retry delays stay far below the broker's visibility timeout: a countdown longer than that would make Redis
# re-deliver the message while it is still scheduled.
PLAN_RETRY_S = 2
BACKEND_RETRY_S = 5
MAX_COUNTDOWN_S = 300
