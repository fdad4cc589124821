"""postroom: scheduled template mail out, inbox rules in."""
