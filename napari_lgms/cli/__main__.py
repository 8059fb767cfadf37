import sys

from napari_lgms.cli import main

sys.exit(main())
