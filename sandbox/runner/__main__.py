"""Start the runner: ``python -I -S -B <runner folder> [--forker] ...``.

Python runs this file as ``__main__`` with the folder itself on ``sys.path``, not as a module of
a package, so the folder's modules (which import each other relatively, as they do when the
parent imports ``sandbox.runner.wire``) are imported here as the package named like the folder:
its parent directory is put on ``sys.path`` just for that import and taken off again, so the
code of a run sees the same ``sys.path`` as any ``python -I -S``. Standard library only.
"""

import os
import sys

_FOLDER = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p) != _FOLDER]  # its modules only as the package's
sys.path.insert(0, os.path.dirname(_FOLDER))
try:
    # the zygote, or the forker (a fresh interpreter the zygote starts: it never imports the zygote)
    _ENTRY = __import__(os.path.basename(_FOLDER) + (".forker" if "--forker" in sys.argv[1:] else ".zygote"),
                        fromlist=["main"])
finally:
    del sys.path[0]

sys.exit(_ENTRY.main(sys.argv[1:]))
