"""Lightning modules that train the layers of :mod:`layers` (eager or compiled, with a profiler callback).

The examples arrive with their own issue.
"""

__all__: list[str] = []
