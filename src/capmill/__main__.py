import sys

from capmill.cli.main import main

sys.exit(main())
