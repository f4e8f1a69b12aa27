"""Measuring a run: speed (`bench`), memory per phase (`meter`) and the VRAM report of
`gptoss-lite profile` (`vram_report*`). It sits above the engine it measures."""
