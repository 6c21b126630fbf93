import sys

from sparekit.cli.main import main

sys.exit(main())
