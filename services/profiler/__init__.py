"""The profiler worker: the workers' tasks on the `profiler` queue, one task at a time."""
