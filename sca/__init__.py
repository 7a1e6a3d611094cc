"""sca: the Self-Challenging Agent toolkit.

The library every stage stands on: the records between stages (:mod:`sca.records`), the agents
and their episode engine (:mod:`sca.agent`), the benchmarks and their scorers
(:mod:`sca.benchmarks`), inference backends (:mod:`sca.inference`), metrics, training and reports.
"""

__version__ = "0.1.0"
