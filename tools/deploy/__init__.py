"""Deploy the firmware to a board: python3 -m tools.deploy --help."""
