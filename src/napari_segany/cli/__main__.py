"""``python -m napari_segany.cli``: the command line."""

from .main import main

raise SystemExit(main())
