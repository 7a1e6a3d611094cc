"""The runner: the program a sandbox worker runs, a folder of standard-library-only modules.

It runs inside the sandbox (a bubblewrap namespace, a Docker container or a plain process), where
nothing else of the project exists, as ``python -I -S -B <this folder>`` (``__main__`` imports the
folder as a package and starts the zygote, or with ``--forker`` the forker). One module per idea:

- ``wire``: the frames and messages between the parent and the runner, the measures of JSON and
  the limits both sides enforce; the only module the parent imports (``sandbox.runner.wire``);
- ``zygote``: the worker's long-lived process, which serves runs one after the other;
- ``forker``: the fresh interpreter that forks one child per run, and the zygote's handle on it;
- ``child``: the run's own process: the tools as functions, the code run, the report;
- ``seccomp``: prctl(2) and the seccomp filter every run gets;
- ``scrub``: after a run, the writable places emptied and what the run left alive found.

This file imports nothing, so that importing ``sandbox.runner.wire`` costs nothing more.
"""
