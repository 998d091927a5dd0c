"""The release gate: bring a stack up, run the suites and a load profile, read
the SLO figures back from Prometheus, and write a go / no-go report.

- ``suites.py``: the pytest suites as a child process, read back from JUnit XML;
- ``acceptance.py``: the spec's acceptance criteria mapped to evidence;
- ``crosscheck.py``: server-side figures beside the load generator's;
- ``prometheus.py``: objective values and time series over the load window;
- ``report.py``: report.html, report.json, junit.xml, summary.md;
- ``runner.py``: one ``GateRun`` wiring it together.
"""
