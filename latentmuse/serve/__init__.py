"""``latentmuse serve``: lip-sync as an HTTP job service on Ray Serve (docs/SERVE.md).

- :mod:`.store`: the durable job records (SQLite, one writer: the ingress);
- :mod:`.intake`: a request made into a job (streamed uploads with a size cap, paths kept inside
  ``--input-root``, options checked as a batch job's, inputs probed as ``run`` probes them);
- :mod:`.worker`: one loaded ``LipSync`` running one job at a time, its progress streamed back;
- :mod:`.api`: the FastAPI routes (``/v1/jobs``, ``/healthz``, ``/metrics``) over a :class:`.api.JobService`;
- :mod:`.web`: the Gradio page at ``/``;
- :mod:`.service`: the Ray Serve application (ingress + worker deployments) and its start and stop.

Only :mod:`.service` imports Ray; the rest runs (and is tested) in one process.
"""
