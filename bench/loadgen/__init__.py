"""The load benchmark's parts (bench/load.py and tests/load/): the production-like stack on loopback, the async
multi-tenant driver, the analysis check, process memory, and the report."""
