"""Benchmark harness: Cargohold against CNCF Distribution on the same machine, same run.

`python -m bench --quick` (under 3 minutes) or `--full`. The harness starts each system
itself (`bench.systems`), drives it with its own asyncio OCI client (`bench.oci`) through
the workloads in `bench.workloads`, measures the client and the machine's physical bounds
(`bench.calibrate`, `bench.physical`), and writes JSON, Markdown and PNG results under
`bench/results/` (`bench.report`, `bench.charts`). See bench/README.md.
"""
