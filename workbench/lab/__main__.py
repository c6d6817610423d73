"""``python -m workbench.lab table ...``: the upsampling lab's command line."""

from .operators import main

raise SystemExit(main())
