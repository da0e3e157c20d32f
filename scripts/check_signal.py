"""Print how well recent histories reveal the simulator's latent states, vs static features.

python scripts/check_signal.py DATA_DIR
"""

from __future__ import annotations

import json
import sys

from issuer_seq.simulate.diagnostics import history_signal

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(json.dumps(history_signal(sys.argv[1]), indent=2))
