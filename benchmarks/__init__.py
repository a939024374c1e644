"""sdbatch benchmarks: simulated WebUI backends on loopback, clients measured in their own
processes. Run ``python -m benchmarks`` (``--quick`` for a sanity check); see BENCHMARKS.md."""
