"""Generated from protos/ by tools/genproto.py; do not edit."""
