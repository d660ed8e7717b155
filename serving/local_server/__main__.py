import sys

from serving.local_server.cli import main

sys.exit(main())
