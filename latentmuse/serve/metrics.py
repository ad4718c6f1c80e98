"""``/metrics``: Prometheus text computed from the job store at each scrape.

The figures are the store's (durable across restarts, the same numbers ``GET /v1/jobs`` shows), read
by a collector on a registry of this call's own (no process-wide metric state): jobs by status, the
queue's length, jobs running, frames written and their rate, and a histogram of seconds per job.
"""

from __future__ import annotations

from .store import QUEUED, RUNNING, STATUSES, JobStore

#: the seconds-per-job histogram's buckets (a short clip on a GPU .. a long one on a CPU)
BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def metrics_text(store: JobStore) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class StoreCollector:
        def collect(self):
            counts = store.counts()
            jobs = GaugeMetricFamily("latentmuse_jobs", "Jobs by status.", labels=["status"])
            for status in STATUSES:
                jobs.add_metric([status], counts[status])
            yield jobs
            yield GaugeMetricFamily("latentmuse_queue_length", "Jobs waiting for a worker.", value=counts[QUEUED])
            yield GaugeMetricFamily("latentmuse_jobs_running", "Jobs on a worker now.", value=counts[RUNNING])
            totals = store.totals()
            yield CounterMetricFamily("latentmuse_frames", "Frames written by finished jobs.", value=totals["frames"])
            rate = totals["frames"] / totals["seconds"] if totals["seconds"] > 0 else 0.0
            yield GaugeMetricFamily("latentmuse_frames_per_second",
                                    "Frames written per second of job time, over the finished jobs.", value=rate)
            seconds = store.finished_seconds()
            buckets = [(str(float(b)), sum(s <= b for s in seconds)) for b in BUCKETS] + [("+Inf", len(seconds))]
            yield HistogramMetricFamily("latentmuse_job_seconds", "Seconds per finished job (done, low_sync, failed).",
                                        buckets=buckets, sum_value=sum(seconds))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
