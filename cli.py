"""Thin entry: `python cli.py ...` runs the lrtransfer command line."""
from lrtransfer.cli import main

if __name__ == "__main__":
    main()
