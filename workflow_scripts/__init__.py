"""shiftlens' workflow logic: each module runs as `python -m workflow_scripts.<module>` in a rule.

Job logs are files: the Hugging Face libraries' carriage-return progress bars (weight loading,
shard writing, downloads) are turned off here, before they are imported, unless the user set the
variable; the jobs report progress as plain lines instead (`progress.py`).
"""
import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
