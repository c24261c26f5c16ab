"""The reporting side: run folders of ``experiments.evaluate`` found, read, summarized and written as
tables, CSV, JSON, figures and a markdown report. ``summarize.py`` at the repository root is its
command line. It sits a layer above ``experiments``: it reads run folders through
``experiments.run_folder`` and asks ``experiments`` what a dataset kind or a method's variant is.

* ``finding``: the run folders a command names.
* ``run_files``, ``case_files``: one run's files read and checked, a damaged one left out with a warning.
* ``summary``: :class:`~reporting.summary.RunSummary` of one run, and of the runs asked for.
* ``tables``, ``outputs``, ``descriptions``: the printed report, the JSON/CSV files, what every key means.
* ``plots``, ``curve_stats``, ``report``: figures with their standard errors, and the markdown report.
"""
