"""``python -m tests.chaos.preloaded_worker -A APP worker ...``: the Celery command line with the inference stack
(torch, torchvision, open_clip) imported first, so that the prefork pool's children inherit it instead of each
importing it again.

Chaos tests start a dozen workers; on a 2-core CI machine each child's imports cost tens of seconds and would push
every kill into them. The worker is otherwise the production one: same app, same settings, same tasks.
"""

from __future__ import annotations

import sys

from celery.__main__ import main

from gpu_worker.models.open_clip_loader import import_open_clip

if __name__ == "__main__":
    import_open_clip()
    sys.argv = ["celery", *sys.argv[1:]]
    main()
