"""The states of a point (points.status): done | failed | diverged | stopped. The one definition
of which point counts as what, in a module of its own so that the statistics modules (analysis,
forecast, pareto, mitigation) name them without importing the store; `core.store` re-exports
them (`store.DONE`)."""

DONE = "done"  # measured in full: has results to show
FINISHED = (DONE, "diverged", "stopped")  # kept for good: resume never trains these again
ENDED = (*FINISHED, "failed")  # no longer in flight (a failed point is retried on resume)
