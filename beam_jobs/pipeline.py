"""The build job's Beam graph: the keyed graph (scales with the data) or the per-day graph (the fast path
for small inputs), chosen by ``Job.graph`` (docs/decisions/0028-keyed-build-graph.md). Both write the same
examples, vocabularies, statistics and manifest."""

from __future__ import annotations

import apache_beam as beam

from beam_jobs.keyed import BuildKeyed
from beam_jobs.options import Job
from beam_jobs.per_day import BuildPerDay


class BuildExamples(beam.PTransform):
    """The whole job as one composite transform applied to a pipeline root; its output is the manifest path."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job

    def expand(self, root):
        graph = BuildKeyed(self._job) if self._job.graph == "keyed" else BuildPerDay(self._job)
        return root | graph
