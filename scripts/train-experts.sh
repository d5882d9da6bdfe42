#!/usr/bin/env bash
# Trains the real domain experts (math, code, writing) and the generalist into models/
# from ../shared/corpora: installs Debian's PyTorch, SentencePiece and NumPy when
# missing, then runs scripts/train_experts.py with the arguments given (its --help
# lists them). Run by hand; the build, the tests and the demo only read models/.
# Debian's torch uses the system BLAS (libblas.so.3): OpenBLAS, which install-deps.sh
# installs for coegate itself, makes it about 25 times faster than the reference BLAS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh python3-torch python3-sentencepiece python3-numpy
exec /usr/bin/python3 scripts/train_experts.py "$@"
