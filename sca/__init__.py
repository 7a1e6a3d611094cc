"""sca: the Self-Challenging Agent toolkit.

The core library shared by every stage: the JSONL records (:mod:`sca.records`)
and how they are read and written (:mod:`sca.artifacts`).
"""

__version__ = "0.1.0"
