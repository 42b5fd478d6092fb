"""Reliability tests without Ray (ingest, tenant isolation, prompt fences, the HTTP layer): ray.init raises here.

They share one pytest process with tests/serve, whose session fixture owns the only local Ray.
"""

from tests.fakes import forbid_ray  # noqa: F401  (an autouse fixture)
