"""Generated at build time from protos/ (setup.py); not edited by hand."""
