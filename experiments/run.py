"""``python experiments/run.py ...``: the experiments' command line (:mod:`experiments.cli`) run as a script, the
form the result JSONs and docs/RESULTS.md record as each row's command."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a script puts experiments/ first on the path, not the checkout: experiments.*
    sys.path.insert(0, str(REPO))

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
