"""``python -m provisioner`` runs the gpuctl CLI."""

import sys

from provisioner.cli import main

sys.exit(main())
