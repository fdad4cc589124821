"""postroom: scheduled template mail out, inbox rules in."""

__version__ = "0.1.0"
