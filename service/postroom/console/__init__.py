"""The web pages postroom serves on loopback: the console and the template preview."""
