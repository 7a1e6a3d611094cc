"""The records that cross a stage boundary: their schemas (:mod:`sca.records.schema`: the CaT
task, the validated task, the trajectory, the eval result, the training log line), how JSONL files
of them are read and written (:mod:`sca.records.io`), and the bookkeeping of a stage's run over
them, its sidecar meta included (:mod:`sca.records.stage_run`). Each is defined once, there; this
package re-exports the names stages use.
"""

from sca.records.io import (
    STDIO,
    InputError,
    Loaded,
    RecordWriter,
    StreamedInput,
    drop_lines,
    dumps_record,
    load_records,
    scan_jsonl,
    write_json_atomic,
)
from sca.records.schema import (
    CAT_TASK,
    EVAL_RESULT,
    TERMINATIONS,
    TRAIN_LOG_LINE,
    TRAINING_TRAJECTORY,
    TRAJECTORY,
    VALIDATED_TASK,
    Field,
    RecordError,
    RecordSchema,
)
from sca.records.progress import progress
from sca.records.stage_run import RunMeta, StageRun

__all__ = ["CAT_TASK", "EVAL_RESULT", "STDIO", "TERMINATIONS", "TRAIN_LOG_LINE", "TRAINING_TRAJECTORY", "TRAJECTORY",
           "VALIDATED_TASK", "Field", "InputError", "Loaded",
           "RecordError", "RecordSchema", "RecordWriter", "RunMeta", "StageRun", "StreamedInput", "drop_lines",
           "dumps_record", "load_records", "progress", "scan_jsonl", "write_json_atomic"]
