#!/usr/bin/env python
"""Train and evaluate a method: `python train.py method=drgfer dataset=rafdb key=value ...` (see README)."""

from lrfer.cli.train import main

if __name__ == "__main__":
    main()
