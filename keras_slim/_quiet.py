"""Quiet TensorFlow's C++ logs for the `keras-slim` command line.

Imported first by the package, so that it runs before TensorFlow loads
(the variable is read once, at TensorFlow's import). Only when the
running program is the `keras-slim` console script, and only if the user
has not set `TF_CPP_MIN_LOG_LEVEL`: a library must not change the logging
of the programs that import it.
"""

import os
import sys

if sys.argv and os.path.basename(sys.argv[0]) == "keras-slim":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
