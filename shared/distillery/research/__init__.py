"""Research tools that need neither torch nor a server: seed statistics (`stats`), the sweep
comparison table (`summary`), bias–variance and calibration (`variance`, `calibration`), and the
Markdown + PNG report (`report`)."""
