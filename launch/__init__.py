"""Thin entry points (each: parse the command line, call the package). Run as `python launch/NAME.py`,
`python -m launch.NAME`, or the console scripts setup.py declares (`layoutlmv3-pretrain`, ...)."""
