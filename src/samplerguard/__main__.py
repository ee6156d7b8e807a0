import sys

from samplerguard.cli import main

sys.exit(main())
