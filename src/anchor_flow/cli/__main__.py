"""``python -m anchor_flow.cli``: the ``anchor-flow`` command, e.g. under ``torchrun -m``."""

from anchor_flow.cli import main

raise SystemExit(main())
