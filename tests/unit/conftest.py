"""Unit tests never start Ray: ray.init raises here (Ray Serve's own unit tests do the same)."""

from tests.fakes import forbid_ray  # noqa: F401  (an autouse fixture)
