import os
import tempfile

os.environ.setdefault("LOCDISTILL_NO_PROGRESS", "1")
# Generated datasets go to one session-wide temp cache, never the user's home.
os.environ["LOCDISTILL_CACHE"] = tempfile.mkdtemp(prefix="locdistill-test-cache-")

import torch  # noqa: E402

# The test models are tiny: thread hand-offs cost more than they save.
torch.set_num_threads(1)
