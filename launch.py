"""Start the Studio web app: `python launch.py` (see `python launch.py --help`)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from studio.server import main  # noqa: E402

if __name__ == "__main__":
    main()
