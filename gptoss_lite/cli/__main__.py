"""`python -m gptoss_lite.cli`: the same as the `gptoss-lite` command."""

from . import main

main()
