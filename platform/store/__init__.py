"""Metadata store: SQLAlchemy 2 schema, Alembic migrations run from code, frozen records.

Every function takes the `Database` from `open_database` first and returns frozen records.
"""
from .artifacts import (artifact_consumers, find_artifacts, get_artifact, list_artifacts, newest_run_named,
                        register_artifact, resolve_artifact_ref)
from .engine import (Database, current_revision, dispose_engines, downgrade_database, head_revision, open_database,
                     upgrade_database)
from .leases import lease_owner, lease_values, owner_is_gone
from .ledger import (Recovery, add_attempt_inputs, add_attempt_outputs, adopt_orphans, attempt_is_dead, complete_run,
                     expired_runs, hold_dispatch, log_attempt_metrics, orphaned_runs, recover_expired, renew_lease,
                     retry_or_fail)
from .lineage import LineageGraph, lineage
from .metrics import final_metrics, get_metrics, log_metrics
from .records import (ArtifactRecord, MetricRecord, RunArtifactEdge, RunEventRecord, RunRecord, SweepRecord,
                      new_id)
from .runs import (IllegalTransition, add_run_inputs, add_run_outputs, create_run, find_cached_run, get_run, list_runs,
                   record_cache_hit, record_join_hit, request_cancel, run_events, run_inputs, run_outputs,
                   transition)
from .sweeps import create_sweep, get_sweep, set_sweep_status

__all__ = [
    "ArtifactRecord", "Database", "IllegalTransition", "LineageGraph", "MetricRecord", "RunArtifactEdge", "Recovery",
    "RunEventRecord", "RunRecord", "SweepRecord", "add_attempt_inputs", "add_attempt_outputs", "adopt_orphans",
    "attempt_is_dead", "complete_run", "expired_runs", "hold_dispatch", "lease_owner", "lease_values",
    "log_attempt_metrics", "orphaned_runs", "owner_is_gone", "recover_expired", "renew_lease", "retry_or_fail",
    "add_run_inputs", "add_run_outputs", "artifact_consumers", "create_run", "create_sweep", "current_revision",
    "dispose_engines", "downgrade_database", "final_metrics", "find_artifacts", "find_cached_run", "get_artifact",
    "get_metrics", "get_run", "get_sweep", "head_revision", "lineage", "list_artifacts", "list_runs", "log_metrics",
    "new_id", "newest_run_named", "open_database", "record_cache_hit", "record_join_hit", "register_artifact",
    "request_cancel", "resolve_artifact_ref", "run_events", "run_inputs", "run_outputs", "set_sweep_status",
    "transition", "upgrade_database",
]
