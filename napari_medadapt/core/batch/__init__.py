"""Cohorts: segment, adapt and embed many volumes headless, resumable, in-process or on Dask, with provenance."""

from .cohort import Case, CohortError, read_cohort, shard
from .runner import BatchSummary, run_batch
from .tasks import METHODS, BatchSettings

__all__ = ["METHODS", "BatchSettings", "BatchSummary", "Case", "CohortError", "read_cohort", "run_batch", "shard"]
